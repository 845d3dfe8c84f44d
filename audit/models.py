from django.conf import settings
from django.db import models
from django.utils import timezone

from common.append_only import AppendOnlyError
from registry.models import UNTRAINED_WARNING

__all__ = ["AppendOnlyError", "ChainGenesis", "IdempotencyKey", "Prediction"]


class PredictionQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("The prediction log is append-only: rows cannot be updated.")

    def delete(self):
        raise AppendOnlyError("The prediction log is append-only: rows cannot be deleted.")


class Prediction(models.Model):
    """One prediction as it was returned. Append-only: on Postgres a trigger refuses UPDATE and
    DELETE; everywhere the model layer refuses them too."""

    # The application's database role may only read and append (common.db_roles).
    database_privileges = ("SELECT", "INSERT")

    SOURCE_WEB = "web"
    SOURCE_API = "api"
    SOURCE_PACS = "pacs"
    SOURCE_BATCH = "batch"
    SOURCE_CHOICES = [
        (SOURCE_WEB, "Web page"),
        (SOURCE_API, "REST API"),
        (SOURCE_PACS, "PACS"),
        (SOURCE_BATCH, "Batch job"),
    ]

    # Indexed together with id in Meta.indexes (keyset pagination orders by both).
    # default, not auto_now_add: the chain hashes created_at before the insert, and save() must
    # store that value (auto_now_add would overwrite it with a later clock reading).
    created_at = models.DateTimeField(default=timezone.now)
    # No index of their own for the foreign keys: the (model, created_at, id) and (user, created_at,
    # id) indexes in Meta.indexes serve every lookup by model or user.
    model = models.ForeignKey(
        "registry.ModelVersion", on_delete=models.PROTECT, db_column="model_id", db_index=False
    )
    image_url = models.TextField(help_text="Name of the analysed image in the 'xray_images' storage.")
    results_json = models.JSONField()

    # Indexed in Meta.indexes: a plain btree, without the varchar_pattern_ops `_like` twin that
    # db_index adds on Postgres (no query of the log matches image hashes by prefix).
    image_sha256 = models.CharField(max_length=64)
    file_name = models.CharField(
        max_length=255,
        blank=True,
        default="",
        help_text="Base name of the uploaded file, truncated (a DICOM's name may carry patient data: shown "
        "to those who may see the prediction only).",
    )
    user = models.ForeignKey(
        settings.AUTH_USER_MODEL,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        db_index=False,
    )
    source = models.CharField(max_length=8, choices=SOURCE_CHOICES, default=SOURCE_WEB)
    latency_ms = models.FloatField(null=True, blank=True)
    heatmaps = models.JSONField(
        default=dict,
        help_text="Chain version 1 rows: finding name to its raw Grad-CAM map (e.g. 7x7 lists of floats). "
        "Version 2 rows keep the maps in heatmap_data and leave this empty.",
    )
    # Chain version 2: the maps as uint8 levels with one float32 scale per map (findings in
    # results_json order, each h x w; engine.heatmap_codec): 698 bytes for 13 maps of 7x7 instead
    # of ~6 KB of JSON, small enough to stay inline (no TOAST). The chain hashes these bytes.
    heatmap_data = models.BinaryField(blank=True, default=b"", editable=False)
    # Which canonical form the chain hashes for this row (audit.integrity); rows written before
    # version 2 existed are version 1, before the keyed chain version 2.
    chain_version = models.PositiveSmallIntegerField(default=3, editable=False)
    # Chain version 3: the id of the audit key (audit.keys) whose HMAC is chain_hash.
    chain_key_id = models.CharField(max_length=32, blank=True, default="", editable=False)
    # Hash chain (audit.integrity): each row's chain_hash covers its fields and the previous row's.
    # stored_sha256 is the stored (metadata-stripped) image's own hash; image_sha256 is the upload's.
    stored_sha256 = models.CharField(max_length=64, blank=True, default="", editable=False)
    prev_hash = models.CharField(max_length=64, blank=True, default="", editable=False)
    chain_hash = models.CharField(max_length=64, blank=True, default="", editable=False)

    objects = PredictionQuerySet.as_manager()

    class Meta:
        db_table = "predictions"
        ordering = ["-created_at", "-id"]
        indexes = [
            # Every list of the log is newest first, by (created_at, id): keyset pages, date ranges.
            models.Index(fields=["created_at", "id"], name="predictions_created_id"),
            models.Index(fields=["model", "created_at", "id"], name="predictions_model_created_id"),
            models.Index(fields=["user", "created_at", "id"], name="predictions_user_created_id"),
            models.Index(fields=["image_sha256"], name="predictions_image_sha256"),
        ]
        permissions = [("view_all_predictions", "Can read the audit log and every prediction")]

    def __str__(self) -> str:
        return f"prediction {self.pk}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("The prediction log is append-only: rows cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("The prediction log is append-only: rows cannot be deleted.")

    def heatmap_maps(self) -> dict:
        """{finding name: its raw map (h x w nested lists of floats)}, whichever form the row has."""
        if not self.heatmap_data:
            return dict(self.heatmaps or {})
        from engine.heatmap_codec import heatmaps_decode

        maps = heatmaps_decode(self.heatmap_data)
        names = [finding["name"] for finding in (self.results_json or {}).get("findings", [])]
        return {name: cam.tolist() for name, cam in zip(names, maps, strict=True)}

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

    @property
    def honesty(self) -> dict:
        """{"state", "statement"}: what every output of this result must say about the version
        that made it, as recorded when it was made (analysis.results), so a later evaluation never
        changes what an earlier result says. Rows written before it was recorded get the version's
        rule applied at their creation time."""
        recorded = (self.results_json or {}).get("honesty")
        if isinstance(recorded, dict) and "state" in recorded:
            return recorded
        if self.untrained:
            return {"state": "untrained", "statement": UNTRAINED_WARNING}
        return self.model.honesty(at=self.created_at)

    @property
    def honesty_statement(self) -> str | None:
        return self.honesty.get("statement")


class ChainGenesis(models.Model):
    """Where the hash chain begins: rows with an id up to `unchained_through_id` were written
    before the chain existed and are accepted without hashes (audit migration 0007 records it once,
    from the data it finds). Every other row without a chain hash fails verify_audit."""

    database_privileges = ("SELECT",)  # common.db_roles: the application only reads it

    unchained_through_id = models.BigIntegerField(default=0)
    # Rows from this id on must be keyed (chain version 3): audit migration 0013 records the first
    # id after the rows that existed when the keyed chain was installed.
    keyed_from_id = models.BigIntegerField(default=1)
    recorded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        db_table = "audit_chain_genesis"

    def __str__(self) -> str:
        return f"chain begins after prediction {self.unchained_through_id}"


class FindingLabelQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("Feedback labels are append-only: rows cannot be updated.")

    def delete(self):
        raise AppendOnlyError("Feedback labels are append-only: rows cannot be deleted.")


class FindingLabel(models.Model):
    """A clinician's or auditor's mark on one finding of one prediction. Append-only: a new mark
    supersedes the old one, and the latest mark per (prediction, finding) is the label
    (audit.label_selectors)."""

    database_privileges = ("SELECT", "INSERT")  # common.db_roles

    PRESENT, ABSENT, UNSURE = "present", "absent", "unsure"
    VALUE_CHOICES = [(PRESENT, "Present"), (ABSENT, "Absent"), (UNSURE, "Unsure")]

    prediction = models.ForeignKey(Prediction, on_delete=models.PROTECT, related_name="finding_labels")
    finding = models.CharField(max_length=100)
    value = models.CharField(max_length=8, choices=VALUE_CHOICES)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    after_model_output = models.BooleanField(
        default=True,
        help_text="Given after seeing the model's output (the result page always shows it): such a mark "
        "may lean towards what the model said, and training says how many of its labels were such.",
    )

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


class IdempotencyKey(models.Model):
    """An `Idempotency-Key` a client sent with POST /api/v1/predictions/ and the prediction it made
    (audit.idempotency): the same user sending the same key again gets that prediction back
    instead of a second row. Written in the transaction that writes the prediction."""

    database_privileges = ("SELECT", "INSERT")  # common.db_roles

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.PROTECT, related_name="+")
    key = models.CharField(max_length=255)
    prediction = models.OneToOneField(Prediction, on_delete=models.PROTECT, related_name="+")
    created_at = models.DateTimeField(default=timezone.now)

    class Meta:
        db_table = "prediction_idempotency_keys"
        constraints = [models.UniqueConstraint(fields=["user", "key"], name="idempotency_key_per_user")]

    def __str__(self) -> str:
        return f"key {self.key!r} of user {self.user_id}: prediction {self.prediction_id}"
