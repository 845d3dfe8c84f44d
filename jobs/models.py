"""Batch jobs: one PredictionJob per submission and one JobImage per member of it. The audit rows
(audit.Prediction, source "batch") are the results; these rows only track progress."""

from django.conf import settings
from django.db import models


class PredictionJob(models.Model):
    STATE_QUEUED = "queued"
    STATE_RUNNING = "running"
    STATE_DONE = "done"
    STATE_CANCELLED = "cancelled"
    STATE_CHOICES = [
        (STATE_QUEUED, "Queued"),
        (STATE_RUNNING, "Running"),
        (STATE_DONE, "Done"),
        (STATE_CANCELLED, "Cancelled"),
    ]

    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT)
    source = models.CharField(max_length=16, help_text="api, web, command or pacs")
    model_at_start = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    state = models.CharField(max_length=10, choices=STATE_CHOICES, default=STATE_QUEUED)
    total = models.PositiveIntegerField(default=0)
    done = models.PositiveIntegerField(default=0)
    refused = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"job {self.pk}"

    @property
    def finished(self) -> int:
        return self.done + self.refused + self.failed


class JobImage(models.Model):
    STATE_PENDING = "pending"
    STATE_DONE = "done"
    STATE_REFUSED = "refused"
    STATE_FAILED = "failed"
    STATE_CANCELLED = "cancelled"
    STATE_CHOICES = [
        (STATE_PENDING, "Pending"),
        (STATE_DONE, "Logged"),
        (STATE_REFUSED, "Refused"),
        (STATE_FAILED, "Failed"),
        (STATE_CANCELLED, "Cancelled"),
    ]

    job = models.ForeignKey(PredictionJob, on_delete=models.CASCADE, related_name="images")
    position = models.PositiveIntegerField(help_text="Order in the submission.")
    name = models.CharField(max_length=512)
    sha256 = models.CharField(max_length=64, blank=True, default="")
    size = models.PositiveBigIntegerField(default=0)
    state = models.CharField(max_length=10, choices=STATE_CHOICES, default=STATE_PENDING)
    reason = models.TextField(blank=True, default="")
    code = models.CharField(
        max_length=40,
        blank=True,
        default="",
        help_text="Why it was refused or failed, as the API's error code.",
    )
    staged_name = models.CharField(
        max_length=255, blank=True, default="", help_text="The bytes waiting in xray_images storage."
    )
    # One audit row per image at most: a task run twice (a worker killed after logging, before
    # its acknowledgement) finds the link and logs nothing again.
    prediction = models.OneToOneField(
        "audit.Prediction", null=True, blank=True, on_delete=models.PROTECT, related_name="job_image"
    )
    model_version = models.ForeignKey(
        "registry.ModelVersion", null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )

    class Meta:
        ordering = ["job", "position"]
        constraints = [
            models.UniqueConstraint(fields=["job", "position"], name="jobs_image_unique_position"),
        ]

    def __str__(self) -> str:
        return f"{self.name} ({self.state})"
