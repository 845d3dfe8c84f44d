"""What lungsite keeps of the studies the PACS sends: identifiers and states, never the patient.

A row holds DICOM UIDs (the key an auditor needs to find the study in the PACS), the accession
number (what a radiologist types into the PACS to open the study), the technical tags the
frontal-chest check read, a keyed hash standing for the patient ID, and what became of the image.
Names, IDs, birth dates and descriptions stay in the PACS; the header is read in memory only
(pacs.services).
"""

from django.db import models
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
    accession_number = models.CharField(max_length=16, blank=True, db_index=True)
    # HMAC-SHA256 of the PACS's PatientID (and IssuerOfPatientID) under LUNGSITE_PATIENT_KEY_SECRET:
    # equal for the same patient, useless without the key, never the ID itself. "" when none was sent.
    patient_key = models.CharField(max_length=64, blank=True, db_index=True)
    modality = models.CharField(max_length=16, blank=True)
    body_part = models.CharField(max_length=16, blank=True)
    view_position = models.CharField(max_length=16, blank=True)

    state = models.CharField(max_length=8, choices=STATE_CHOICES, default=QUEUED, db_index=True)
    reason = models.TextField(blank=True, help_text="Why it was skipped or failed.")
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
    """The outbox: one DICOM result object (the SR or one heatmap secondary capture) to send back
    by STOW-RS. The bytes are not kept: they are rebuilt at send time from the audit row and the
    patient/study module read from the PACS (docs/pacs.md), under the UIDs fixed here, so every
    attempt sends the same object."""

    KIND_SR = "sr"
    KIND_SC = "sc"
    KIND_CHOICES = [(KIND_SR, "Structured report"), (KIND_SC, "Heatmap secondary capture")]

    PENDING = "pending"
    SENT = "sent"
    FAILED = "failed"
    STATE_CHOICES = [(PENDING, "Pending"), (SENT, "Sent"), (FAILED, "Failed")]

    received = models.ForeignKey(ReceivedInstance, on_delete=models.PROTECT, related_name="results")
    kind = models.CharField(max_length=2, choices=KIND_CHOICES)
    finding = models.CharField(max_length=100, blank=True, help_text="The finding of a heatmap SC.")
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
