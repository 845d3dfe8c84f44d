"""Studies from the PACS: receive an instance, analyse it, send the results back.

`instance_receive` is the one way in (the C-STORE handler and the STOW-RS endpoint both call it):
it reads the header in memory, records a row without patient data, and queues the analysis with a
copy of the dataset that holds only the pixel module and the UIDs. `instance_analyse` (run by the
Celery task) predicts through analysis.services and fills the outbox; `result_deliver` sends one
result object by STOW-RS, rebuilding it from the audit row and the patient/study header that it
reads back from the PACS, so no patient data is ever at rest in lungsite (docs/pacs.md).
"""

from __future__ import annotations

import hashlib
import hmac
import io
import logging
import warnings
from datetime import timedelta

from django.conf import settings
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import transaction
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from engine.dicom_checks import frontal_chest_refusal
from pacs.models import ReceivedInstance, ResultObject

logger = logging.getLogger(__name__)

# What the analysis needs of a dataset: the pixel module, the VOI/modality transforms the decoder
# applies, the tags of the frontal-chest check, and the UIDs. Everything else (the patient, study
# descriptions, dates, accession numbers, physicians, private tags) stays behind in the receiver.
ANALYSIS_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "PlanarConfiguration",
    "NumberOfFrames",
    "Rows",
    "Columns",
    "BitsAllocated",
    "BitsStored",
    "HighBit",
    "PixelRepresentation",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "ModalityLUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
    "VOILUTSequence",
    "PixelData",
)


class InstanceRefused(Exception):
    """The bytes are not a DICOM instance lungsite can take (unreadable, no UIDs). The row saying
    so is written (`received`); the sender is told it failed."""

    def __init__(self, message: str, *, received: ReceivedInstance) -> None:
        super().__init__(message)
        self.received = received


class QueueUnavailable(Exception):
    """The analysis could not be queued (broker down): the sender should send it again."""


def _text(ds: Dataset, keyword: str, length: int = 64) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str) and hasattr(value, "__len__") and not hasattr(value, "encode"):
        value = value[0] if len(value) else ""
    return str(value).strip()[:length]


def _transfer_syntax(ds: Dataset) -> str:
    meta = getattr(ds, "file_meta", None)
    if meta is not None and "TransferSyntaxUID" in meta:
        return str(meta.TransferSyntaxUID)
    # Headerless (ACR-NEMA style) data carries no transfer syntax; the reader knows how it parsed.
    implicit = (getattr(ds, "original_encoding", None) or (True, True))[0]
    return ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian


def analysis_copy(ds: Dataset) -> bytes:
    """Part 10 bytes of `ds` reduced to ANALYSIS_KEYWORDS (pixel data as received, compressed or
    not): what travels to the worker through the broker, with nothing that names the patient."""
    copy = Dataset()
    for keyword in ANALYSIS_KEYWORDS:
        if keyword in ds:
            copy[keyword] = ds[keyword]
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.get("SOPClassUID", "1.2.840.10008.5.1.4.1.1.7")
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = _transfer_syntax(ds)
    copy.file_meta = meta
    buffer = io.BytesIO()
    copy.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def patient_key(ds: Dataset) -> str:
    """What stands for the patient in lungsite: HMAC-SHA256 of the dataset's IssuerOfPatientID and
    PatientID under LUNGSITE_PATIENT_KEY_SECRET (hex), or "" without a PatientID. The same patient
    sent again gets the same key; the key cannot be turned back into the ID without the secret."""
    patient_id = _text(ds, "PatientID")
    if not patient_id:
        return ""
    message = f"{_text(ds, 'IssuerOfPatientID')}\x00{patient_id}".encode()
    return hmac.new(settings.LUNGSITE_PATIENT_KEY_SECRET.encode(), message, hashlib.sha256).hexdigest()


def _row(source: str, ds: Dataset | None, **fields) -> ReceivedInstance:
    if ds is not None:
        fields.update(
            accession_number=_text(ds, "AccessionNumber", 16),
            patient_key=patient_key(ds),
            study_instance_uid=_text(ds, "StudyInstanceUID"),
            series_instance_uid=_text(ds, "SeriesInstanceUID"),
            sop_instance_uid=_text(ds, "SOPInstanceUID"),
            sop_class_uid=_text(ds, "SOPClassUID"),
            modality=_text(ds, "Modality", 16),
            body_part=_text(ds, "BodyPartExamined", 16),
            view_position=_text(ds, "ViewPosition", 16),
        )
    return ReceivedInstance.objects.create(source=source, **fields)


def _skipped(source: str, ds: Dataset, reason: str) -> ReceivedInstance:
    logger.info("PACS instance skipped: %s", reason)
    return _row(source, ds, state=ReceivedInstance.SKIPPED, reason=reason, finished_at=timezone.now())


def instance_receive(*, dataset_bytes: bytes, source: str) -> ReceivedInstance:
    """Records one DICOM instance (Part 10 bytes) received from the PACS and queues its analysis
    when it is a frontal chest radiograph; anything else is recorded as skipped with the reason.

    Raises InstanceRefused (unreadable bytes; a row says so) or QueueUnavailable (the row says the
    analysis could not be queued; the sender should retry)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(dataset_bytes), force=True)
            sop_instance_uid = _text(ds, "SOPInstanceUID")
            study_instance_uid = _text(ds, "StudyInstanceUID")
    except Exception as exc:  # noqa: BLE001 - a hostile header can make pydicom raise anything
        reason = f"malformed DICOM: the header cannot be read ({type(exc).__name__})"
        raise InstanceRefused(
            reason,
            received=_row(
                source, None, state=ReceivedInstance.SKIPPED, reason=reason, finished_at=timezone.now()
            ),
        ) from exc
    if not sop_instance_uid or not study_instance_uid:
        reason = "malformed DICOM: no SOP Instance UID or Study Instance UID"
        raise InstanceRefused(reason, received=_skipped(source, ds, reason))
    if "PixelData" not in ds:
        return _skipped(source, ds, f"not an image: no pixel data (SOP class {_text(ds, 'SOPClassUID')})")
    refusal = frontal_chest_refusal(ds)
    if refusal is not None:
        return _skipped(source, ds, refusal)
    try:
        data = analysis_copy(ds)
    except Exception as exc:  # noqa: BLE001 - elements pydicom read but cannot write back
        return _skipped(source, ds, f"malformed DICOM: the image cannot be re-encoded ({type(exc).__name__})")

    received = _row(source, ds, state=ReceivedInstance.QUEUED)
    from pacs.tasks import instance_analyse_task

    try:
        instance_analyse_task.delay(received.pk, data)
    except Exception as exc:
        if settings.CELERY_TASK_ALWAYS_EAGER:
            raise  # eager: the analysis itself failed, a bug to see
        logger.error("cannot queue the analysis of received instance %s: %s", received.pk, exc)
        received.state = ReceivedInstance.FAILED
        received.reason = f"the analysis queue is unavailable ({type(exc).__name__}); send it again"
        received.finished_at = timezone.now()
        received.save(update_fields=["state", "reason", "finished_at"])
        raise QueueUnavailable(received.reason) from exc
    received.refresh_from_db()
    return received


# --------------------------------------------------------------------------------------------
# Analysis


def instance_analyse(*, received_id: int, dataset_bytes: bytes) -> ReceivedInstance:
    """Predicts on the analysis copy of a received instance (audit source `pacs`), then queues its
    result objects (the SR, and a secondary capture per positive finding) and tries to send them.
    Idempotent: a redelivered task finds the row no longer queued and does nothing."""
    from analysis.services import PredictionRefused, PredictionUnavailable, prediction_create
    from audit.models import Prediction

    received = ReceivedInstance.objects.get(pk=received_id)
    if received.state != ReceivedInstance.QUEUED or received.prediction_id:
        return received
    upload = SimpleUploadedFile(f"{received.sop_instance_uid}.dcm", dataset_bytes, "application/dicom")
    try:
        prediction = prediction_create(upload=upload, user=None, source=Prediction.SOURCE_PACS)
    except PredictionRefused as exc:  # pixel data that cannot be decoded, too many pixels, ...
        return _finish(received, ReceivedInstance.SKIPPED, f"not analysed: {exc}")
    except PredictionUnavailable as exc:  # no model, storage or database down
        return _finish(received, ReceivedInstance.FAILED, f"analysis failed: {exc}")

    findings = prediction.results_json["findings"]
    top = max(findings, key=lambda f: f["probability"] - f["threshold"])
    with transaction.atomic():
        received.prediction = prediction
        received.top_margin = top["probability"] - top["threshold"]
        received.top_finding = top["name"]
        received.state = ReceivedInstance.DONE
        received.finished_at = timezone.now()
        received.save()
        results = [
            ResultObject(
                received=received,
                kind=ResultObject.KIND_SR,
                series_instance_uid=generate_uid(),
                sop_instance_uid=generate_uid(),
            )
        ]
        sc_series = generate_uid()
        positives = [f["name"] for f in findings if f["positive"]]
        for number, name in enumerate(positives, start=1):
            results.append(
                ResultObject(
                    received=received,
                    kind=ResultObject.KIND_SC,
                    finding=name,
                    series_instance_uid=sc_series,
                    sop_instance_uid=generate_uid(),
                    instance_number=number,
                )
            )
        ResultObject.objects.bulk_create(results)
    for result in ResultObject.objects.filter(received=received):
        result_deliver(result_id=result.pk)
    return received


def _finish(received: ReceivedInstance, state: str, reason: str) -> ReceivedInstance:
    received.state = state
    received.reason = reason
    received.finished_at = timezone.now()
    received.save(update_fields=["state", "reason", "finished_at"])
    return received


# --------------------------------------------------------------------------------------------
# Delivery


def retry_delay(attempts: int) -> timedelta:
    """Exponential backoff: LUNGSITE_PACS_RETRY_SECONDS doubled per failed attempt, capped."""
    seconds = settings.LUNGSITE_PACS_RETRY_SECONDS * 2 ** max(0, attempts - 1)
    return timedelta(seconds=min(seconds, settings.LUNGSITE_PACS_RETRY_MAX_SECONDS))


def _claim(result_id: int) -> bool:
    """Takes a due result for one sender: moves its next_try_at past the send's timeout in one
    UPDATE, so a sweep and an immediate send never send the same object at the same time."""
    now = timezone.now()
    lease = now + timedelta(seconds=3 * settings.LUNGSITE_DICOMWEB_TIMEOUT + 30)
    return bool(
        ResultObject.objects.filter(pk=result_id, state=ResultObject.PENDING, next_try_at__lte=now).update(
            next_try_at=lease
        )
    )


def result_deliver(*, result_id: int) -> ResultObject:
    """Sends one pending, due result object by STOW-RS. On success it is `sent`; when the PACS is
    down or answers 5xx it stays `pending` with the next try after a backoff; when the PACS refuses
    the object itself (4xx) it is `failed` with the PACS's answer (visible on the worklist)."""
    from pacs import dicomweb
    from pacs.results import result_dataset_bytes

    if not _claim(result_id):
        return ResultObject.objects.get(pk=result_id)
    result = ResultObject.objects.select_related("received__prediction__model").get(pk=result_id)
    received = result.received
    result.attempts += 1
    try:
        header = dicomweb.instance_header(
            study=received.study_instance_uid,
            series=received.series_instance_uid,
            sop=received.sop_instance_uid,
        )
        data = result_dataset_bytes(result=result, header=header)
        del header  # the patient module lives in memory for this send only
        dicomweb.stow(data=data, study=received.study_instance_uid)
    except dicomweb.DicomwebError as exc:
        result.last_error = str(exc)[:2000]
        if exc.retryable:
            result.state = ResultObject.PENDING
            result.next_try_at = timezone.now() + retry_delay(result.attempts)
            logger.warning("result %s not delivered (attempt %s): %s", result.pk, result.attempts, exc)
        else:
            result.state = ResultObject.FAILED
            logger.error("result %s refused by the PACS: %s", result.pk, exc)
        result.save(update_fields=["state", "attempts", "next_try_at", "last_error"])
        return result
    except Exception as exc:
        # A bug or an unexpected answer: keep the object pending (never lost) and say why.
        result.last_error = f"{type(exc).__name__}: {exc}"[:2000]
        result.next_try_at = timezone.now() + retry_delay(result.attempts)
        result.save(update_fields=["attempts", "next_try_at", "last_error"])
        logger.exception("result %s could not be built or sent", result.pk)
        return result
    result.state = ResultObject.SENT
    result.sent_at = timezone.now()
    result.last_error = ""
    result.save(update_fields=["state", "attempts", "sent_at", "last_error"])
    return result


def results_deliver_due(*, limit: int = 200) -> list[ResultObject]:
    """Sends the pending result objects whose next try is due, oldest first."""
    due = ResultObject.objects.filter(state=ResultObject.PENDING, next_try_at__lte=timezone.now())
    return [
        result_deliver(result_id=pk)
        for pk in due.order_by("next_try_at").values_list("pk", flat=True)[:limit]
    ]


def results_retry_failed() -> int:
    """Puts failed result objects back in the queue (after the PACS was fixed), due now."""
    return ResultObject.objects.filter(state=ResultObject.FAILED).update(
        state=ResultObject.PENDING, next_try_at=timezone.now()
    )
