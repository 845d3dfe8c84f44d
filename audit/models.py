from django.conf import settings
from django.db import models


class AppendOnlyError(Exception):
    """Raised when code tries to change or remove an audit row."""


class PredictionQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("The prediction log is append-only: rows cannot be updated.")

    def delete(self):
        raise AppendOnlyError("The prediction log is append-only: rows cannot be deleted.")


class Prediction(models.Model):
    """One prediction as it was returned. Append-only: on Postgres a trigger refuses UPDATE and
    DELETE; everywhere the model layer refuses them too."""

    SOURCE_WEB = "web"
    SOURCE_API = "api"
    SOURCE_CHOICES = [(SOURCE_WEB, "Web page"), (SOURCE_API, "REST API")]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    model = models.ForeignKey("registry.ModelVersion", on_delete=models.PROTECT, db_column="model_id")
    image_url = models.TextField(help_text="Name of the analysed image in the 'xray_images' storage.")
    results_json = models.JSONField()

    image_sha256 = models.CharField(max_length=64, db_index=True)
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    source = models.CharField(max_length=8, choices=SOURCE_CHOICES, default=SOURCE_WEB)
    latency_ms = models.FloatField(null=True, blank=True)
    heatmaps = models.JSONField(
        default=dict, help_text="Finding name to its raw Grad-CAM map (feature-map resolution, e.g. 7x7)."
    )
    # Hash chain (audit.integrity): each row's chain_hash covers its fields and the previous row's.
    # stored_sha256 is the stored (metadata-stripped) image's own hash; image_sha256 is the upload's.
    stored_sha256 = models.CharField(max_length=64, blank=True, default="", editable=False)
    prev_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    chain_hash = models.CharField(max_length=64, blank=True, default="", editable=False)

    objects = PredictionQuerySet.as_manager()

    class Meta:
        db_table = "predictions"
        ordering = ["-created_at", "-id"]
        permissions = [("view_all_predictions", "Can read the audit log and every prediction")]

    def __str__(self) -> str:
        return f"prediction {self.pk}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("The prediction log is append-only: rows cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("The prediction log is append-only: rows cannot be deleted.")

    @property
    def recorded_model(self) -> dict:
        """The version that produced this result as the row recorded it (id, version_name, sha256,
        untrained); the foreign key fills in only what an older row may lack."""
        recorded = dict((self.results_json or {}).get("model") or {})
        if not recorded.get("version_name") or not recorded.get("sha256"):
            recorded.setdefault("id", self.model_id)
            recorded["version_name"] = recorded.get("version_name") or self.model.version_name
            recorded["sha256"] = recorded.get("sha256") or self.model.sha256
            recorded.setdefault("untrained", self.model.untrained)
        return recorded

    @property
    def untrained(self) -> bool:
        """Whether the model that produced this result was the untrained kind (its scores mean nothing)."""
        results = self.results_json or {}
        if "untrained" in results:
            return bool(results["untrained"])
        return bool(self.recorded_model.get("untrained"))


class FindingLabelQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Feedback labels are append-only: rows cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Feedback labels are append-only: rows cannot be deleted.")


class FindingLabel(models.Model):
    """A clinician's or auditor's mark on one finding of one prediction. Append-only: a new mark
    supersedes the old one, and the latest mark per (prediction, finding) is the label
    (audit.label_selectors)."""

    PRESENT, ABSENT, UNSURE = "present", "absent", "unsure"
    VALUE_CHOICES = [(PRESENT, "Present"), (ABSENT, "Absent"), (UNSURE, "Unsure")]

    prediction = models.ForeignKey(Prediction, on_delete=models.PROTECT, related_name="finding_labels")
    finding = models.CharField(max_length=100)
    value = models.CharField(max_length=8, choices=VALUE_CHOICES)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    objects = FindingLabelQuerySet.as_manager()

    class Meta:
        db_table = "prediction_labels"
        ordering = ["-id"]
        indexes = [models.Index(fields=["prediction", "finding", "-id"], name="prediction_labels_latest")]

    def __str__(self) -> str:
        return f"{self.finding}: {self.value} on prediction {self.prediction_id}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("Feedback labels are append-only: rows cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("Feedback labels are append-only: rows cannot be deleted.")
