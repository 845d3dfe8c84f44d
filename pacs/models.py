"""What lungsite keeps of the studies the PACS sends: identifiers and states, never the patient.

A row holds DICOM UIDs (the key an auditor needs to find the study in the PACS), the technical tags
the frontal-chest check read, keyed hashes standing for the patient ID and the accession number
(pacs.keys), and what became of the image.
Names, IDs, birth dates and descriptions stay in the PACS; the header is read in memory only
(pacs.services).
"""

from django.db import models
from django.db.models import Q
from django.utils import timezone


class ReceivedInstance(models.Model):
    """One DICOM instance received from the PACS (C-STORE or STOW-RS) and what became of it."""

    SOURCE_CSTORE = "c-store"
    SOURCE_STOW = "stow-rs"
    SOURCE_CHOICES = [(SOURCE_CSTORE, "DICOM C-STORE"), (SOURCE_STOW, "DICOMweb STOW-RS")]

    QUEUED = "queued"
    DONE = "done"
    SKIPPED = "skipped"
    FAILED = "failed"
    STATE_CHOICES = [(QUEUED, "Queued"), (DONE, "Done"), (SKIPPED, "Skipped"), (FAILED, "Failed")]

    received_at = models.DateTimeField(default=timezone.now, db_index=True)
    source = models.CharField(max_length=8, choices=SOURCE_CHOICES)
    study_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)
    series_instance_uid = models.CharField(max_length=64, blank=True)
    sop_instance_uid = models.CharField(max_length=64, blank=True, db_index=True)
    sop_class_uid = models.CharField(max_length=64, blank=True)
    accession_key = models.CharField(
        max_length=64,
        blank=True,
        db_index=True,
        help_text="Keyed hash of the accession number (pacs.services).",
    )
    # HMAC-SHA256 of the PACS's PatientID (and IssuerOfPatientID) under LUNGSITE_PATIENT_KEY_SECRET:
    # equal for the same patient, useless without the key, never the ID itself. "" when none was sent.
    patient_key = models.CharField(max_length=64, blank=True, db_index=True)
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=16, blank=True)
    view_position = models.CharField(max_length=16, blank=True)

    state = models.CharField(max_length=8, choices=STATE_CHOICES, default=QUEUED, db_index=True)
    reason = models.TextField(blank=True, help_text="Why it was skipped or failed.")
    code = models.CharField(
        max_length=40,
        blank=True,
        default="",
        help_text="Why it was skipped or failed, as the API's error code.",
    )
    # sha256 of the Pixel Data element as received: with the SOP Instance UID, what makes a re-sent
    # instance the same one (not analysed again) or a different one under a reused UID (flagged).
    pixel_sha256 = models.CharField(max_length=64, blank=True)
    duplicate_of = models.ForeignKey(
        "self",
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The earlier row of the same SOP Instance UID (same pixels: not analysed again; "
        "other pixels: flagged).",
    )
    prediction = models.OneToOneField(
        "audit.Prediction", null=True, blank=True, on_delete=models.PROTECT, related_name="received_instance"
    )
    # The highest (probability - threshold) over the findings: > 0 when a finding is positive. The
    # worklist sorts "most abnormal first" on it.
    top_margin = models.FloatField(null=True, blank=True, db_index=True)
    top_finding = models.CharField(max_length=100, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "pacs_received_instances"
        ordering = ["-received_at", "-id"]
        constraints = [
            # One analysis per instance: two copies received at once cannot both be queued.
            models.UniqueConstraint(
                fields=["sop_instance_uid", "pixel_sha256"],
                condition=Q(state__in=["queued", "done"]) & ~Q(pixel_sha256=""),
                name="pacs_received_analysed_once",
            )
        ]

    def __str__(self) -> str:
        return f"received instance {self.pk} ({self.state})"

    @property
    def delivery_state(self) -> str:
        """ "" (nothing to send), "pending", "failed" or "sent", over this image's result objects."""
        states = {item.state for item in self.results.all()}
        for state in (ResultObject.FAILED, ResultObject.PENDING, ResultObject.SENT):
            if state in states:
                return state
        return ""


class ResultObject(models.Model):
    """The outbox: one DICOM result object (the SR, or a heatmap's parametric map or secondary
    capture) to send back by STOW-RS. The bytes are not kept: they are rebuilt at send time from
    the audit row and the patient/study module read from the PACS (docs/pacs.md), under the UIDs
    fixed here, so every attempt sends the same object."""

    KIND_SR = "sr"
    KIND_SC = "sc"
    KIND_PM = "pm"
    KIND_CHOICES = [
        (KIND_SR, "Structured report"),
        (KIND_SC, "Heatmap secondary capture"),
        (KIND_PM, "Heatmap parametric map"),
    ]

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    STATE_CHOICES = [(PENDING, "Pending"), (SENT, "Sent"), (FAILED, "Failed")]

    received = models.ForeignKey(ReceivedInstance, on_delete=models.PROTECT, related_name="results")
    kind = models.CharField(max_length=2, choices=KIND_CHOICES)
    finding = models.CharField(max_length=100, blank=True, help_text="The finding of a heatmap (PM or SC).")
    series_instance_uid = models.CharField(max_length=64)
    sop_instance_uid = models.CharField(max_length=64, unique=True)
    instance_number = models.PositiveIntegerField(default=1)

    state = models.CharField(max_length=8, choices=STATE_CHOICES, default=PENDING, db_index=True)
    attempts = models.PositiveIntegerField(default=0)
    next_try_at = models.DateTimeField(default=timezone.now, db_index=True)
    last_error = models.TextField(blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    sent_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        db_table = "pacs_result_objects"
        ordering = ["id"]

    def __str__(self) -> str:
        return f"{self.get_kind_display()} {self.sop_instance_uid} ({self.state})"
