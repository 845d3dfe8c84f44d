"""What learning keeps of its own: training runs and the shadow version's outputs. Evaluations stay
with the versions they measure (registry.models.Evaluation): serving and the activation gate read them."""

from django.conf import settings
from django.db import models

from registry.models import ModelVersion


class TrainingRun(models.Model):
    """One `train_model` run started from the admin (a Celery task) or the command: its settings,
    progress and outcome."""

    QUEUED, RUNNING, DONE, FAILED = "queued", "running", "done", "failed"
    STATUS_CHOICES = [(QUEUED, "Queued"), (RUNNING, "Running"), (DONE, "Done"), (FAILED, "Failed")]

    created_at = models.DateTimeField(auto_now_add=True)
    base_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="training_runs"
    )
    result_version = models.ForeignKey(
        ModelVersion, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    options = models.JSONField(default=dict, help_text="labels, images, epochs, batch_size, lr, ...")
    status = models.CharField(max_length=10, choices=STATUS_CHOICES, default=QUEUED)
    progress = models.JSONField(default=dict, blank=True, help_text="epoch, step, loss, val AUROC.")
    message = models.TextField(blank=True, default="")
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "model_training_runs"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"training run {self.pk} ({self.status})"


class ShadowPrediction(models.Model):
    """The shadow version's output for one live prediction: kept apart from the audit row and never
    shown to clinicians (learning.shadow)."""

    created_at = models.DateTimeField(auto_now_add=True)
    prediction = models.ForeignKey("audit.Prediction", on_delete=models.CASCADE, related_name="+")
    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="shadow_predictions")
    probabilities = models.JSONField(help_text="Class name to probability.")
    latency_ms = models.FloatField(null=True, blank=True)

    class Meta:
        db_table = "model_shadow_predictions"
        ordering = ["-id"]
        constraints = [
            models.UniqueConstraint(fields=["prediction", "version"], name="shadow_one_per_prediction")
        ]

    def __str__(self) -> str:
        return f"{self.version} on prediction {self.prediction_id}"


class TrainingImage(models.Model):
    """An image a version was trained on or tuned on (its validation split chose the epoch,
    thresholds and calibration), by the sha256 of its decoded pixels: so the same picture in
    another file format is still recognised. evaluate_model leaves such images out of an evaluation
    (or, when asked to keep them, marks the evaluation "in sample"); a version trained from another
    inherits the other's images."""

    TRAIN, VALIDATION = "train", "validation"
    SPLIT_CHOICES = [(TRAIN, "Training"), (VALIDATION, "Validation")]

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="training_images")
    pixel_sha256 = models.CharField(max_length=64)
    split = models.CharField(max_length=12, choices=SPLIT_CHOICES)

    class Meta:
        db_table = "model_training_images"
        constraints = [
            models.UniqueConstraint(
                fields=["version", "pixel_sha256"], name="training_image_once_per_version"
            )
        ]

    def __str__(self) -> str:
        return f"{self.pixel_sha256[:12]} ({self.split}) of {self.version}"
