"""Studies from the PACS: receive an instance, analyse it, send the results back.

`instance_receive` is the one way in (the C-STORE handler and the STOW-RS endpoint both call it):
it reads the header in memory, records a row without patient data, and queues the analysis with a
copy of the dataset that holds only the pixel module and the UIDs. An instance already analysed
(same SOP Instance UID, same pixels) is recorded and not analysed again; one that reuses a SOP
Instance UID with other pixels is recorded, flagged and refused. `instance_analyse` (run by the
Celery task) predicts through analysis.services and fills the outbox; `result_deliver` sends one
result object by STOW-RS, rebuilding it from the audit row and the patient/study header that it
reads back from the PACS, so no patient data is ever at rest in lungsite (docs/pacs.md).
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from datetime import timedelta

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, generate_uid

from analysis.services import analyse
from audit.models import Prediction
from common.errors import Refused, Unavailable
from common.metrics import refusal_counted
from engine.dicom_checks import burned_in_refusal, frontal_chest_refusal
from pacs import phi
from pacs.keys import accession_key, keyed_hash
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
    # The core refuses pixels that say they carry burned-in text (names, dates): it must see the tag.
    "BurnedInAnnotation",
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


# DIMSE statuses a refusal is answered with (C-STORE status; STOW-RS Failure Reason).
CANNOT_UNDERSTAND = 0xC000
DUPLICATE_SOP_INSTANCE = 0x0111


class InstanceRefused(Exception):
    """lungsite does not take the instance: the bytes are not a DICOM instance it can read (no
    UIDs), or its SOP Instance UID was analysed before with other pixels. The row saying so is
    written (`received`); the sender is told it failed, with `status`."""

    def __init__(self, message: str, *, received: ReceivedInstance, status: int = CANNOT_UNDERSTAND) -> None:
        super().__init__(message)
        self.received = received
        self.status = status


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
    """What stands for the patient in lungsite: the keyed hash of the dataset's IssuerOfPatientID
    and PatientID, or "" without a PatientID. The same patient sent again gets the same key."""
    return keyed_hash(_text(ds, "IssuerOfPatientID"), _text(ds, "PatientID"))


def _row(source: str, ds: Dataset | None, **fields) -> ReceivedInstance:
    if ds is not None:
        fields.update(
            accession_key=accession_key(_text(ds, "AccessionNumber", 16)),
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


def _skipped(source: str, ds: Dataset, reason: str, code: str, **fields) -> ReceivedInstance:
    logger.info("PACS instance skipped: %s", reason)
    refusal_counted(door="pacs", code=code, status=422)
    return _row(
        source,
        ds,
        state=ReceivedInstance.SKIPPED,
        reason=reason,
        code=code,
        finished_at=timezone.now(),
        **fields,
    )


def pixel_hash(ds: Dataset) -> str:
    """sha256 of the Pixel Data element's value as received (native or encapsulated)."""
    return hashlib.sha256(bytes(ds["PixelData"].value)).hexdigest()


def _earlier(sop_instance_uid: str, pixel_sha256: str, source: str, ds: Dataset) -> ReceivedInstance | None:
    """The row of the same instance when it was analysed (or queued) before: a duplicate row for
    the same pixels; InstanceRefused (a flagged row) for other pixels under the same UID."""
    analysed = ReceivedInstance.objects.filter(
        sop_instance_uid=sop_instance_uid, state__in=[ReceivedInstance.QUEUED, ReceivedInstance.DONE]
    ).exclude(pixel_sha256="")
    same = analysed.filter(pixel_sha256=pixel_sha256).order_by("id").first()
    if same is not None:
        return _skipped(
            source,
            ds,
            f"already analysed: received instance {same.pk} has the same SOP Instance UID and pixels",
            "already_analysed",
            pixel_sha256=pixel_sha256,
            duplicate_of=same,
        )
    other = analysed.order_by("id").first()
    if other is not None:
        reason = (
            f"SOP Instance UID reused with other pixels (received instance {other.pk} had different "
            "pixel data): not analysed, since its results would attach to whichever copy the PACS "
            "kept; check the sender"
        )
        logger.warning("PACS instance flagged: %s", reason)
        flagged = _row(
            source,
            ds,
            state=ReceivedInstance.FAILED,
            reason=reason,
            code="sop_instance_uid_reused",
            pixel_sha256=pixel_sha256,
            duplicate_of=other,
            finished_at=timezone.now(),
        )
        raise InstanceRefused(reason, received=flagged, status=DUPLICATE_SOP_INSTANCE)
    return None


def instance_receive(*, dataset_bytes: bytes, source: str) -> ReceivedInstance:
    """Records one DICOM instance (Part 10 bytes) received from the PACS and queues its analysis
    when it is a frontal chest radiograph; anything else is recorded as skipped with the reason.

    An instance already analysed (same SOP Instance UID and pixels) is recorded as skipped and not
    analysed again. Raises InstanceRefused (unreadable bytes, or a SOP Instance UID analysed before
    with other pixels; a row says so) or QueueUnavailable (the row says the analysis could not be
    queued; the sender should retry)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = dcmread(io.BytesIO(dataset_bytes), force=True)
            sop_instance_uid = _text(ds, "SOPInstanceUID")
            study_instance_uid = _text(ds, "StudyInstanceUID")
            values = phi.patient_values(ds)
    except Exception as exc:  # noqa: BLE001 - a hostile header can make pydicom raise anything
        reason = f"malformed DICOM: the header cannot be read ({type(exc).__name__})"
        raise InstanceRefused(
            reason,
            received=_row(
                source,
                None,
                state=ReceivedInstance.SKIPPED,
                reason=reason,
                code="malformed_dicom",
                finished_at=timezone.now(),
            ),
        ) from exc
    with phi.patient_values_in_hand(values):
        return _receive(ds, source, sop_instance_uid, study_instance_uid)


def _receive(ds: Dataset, source: str, sop_instance_uid: str, study_instance_uid: str) -> ReceivedInstance:
    if not sop_instance_uid or not study_instance_uid:
        reason = "malformed DICOM: no SOP Instance UID or Study Instance UID"
        raise InstanceRefused(reason, received=_skipped(source, ds, reason, "malformed_dicom"))
    if "PixelData" not in ds:
        reason = f"not an image: no pixel data (SOP class {_text(ds, 'SOPClassUID')})"
        return _skipped(source, ds, reason, "dicom_no_pixels")
    # The analysis core refuses these too (engine.decode runs the same checks); skipping here keeps
    # such an instance's pixels out of the broker and the worker.
    refusal = frontal_chest_refusal(ds)
    if refusal is not None:
        return _skipped(source, ds, f"{refusal[:1].upper()}{refusal[1:]}.", "not_frontal_chest")
    refusal = None if settings.LUNGSITE_ALLOW_BURNED_IN_ANNOTATION else burned_in_refusal(ds)
    if refusal is not None:
        return _skipped(source, ds, f"The instance cannot be analysed: {refusal}.", "burned_in_annotation")
    try:
        data = analysis_copy(ds)
    except Exception as exc:  # noqa: BLE001 - elements pydicom read but cannot write back
        reason = f"malformed DICOM: the image cannot be re-encoded ({type(exc).__name__})"
        return _skipped(source, ds, reason, "malformed_dicom")

    pixel_sha256 = pixel_hash(ds)
    earlier = _earlier(sop_instance_uid, pixel_sha256, source, ds)
    if earlier is not None:
        return earlier
    try:
        with transaction.atomic():
            received = _row(source, ds, state=ReceivedInstance.QUEUED, pixel_sha256=pixel_sha256)
    except IntegrityError:
        # The same instance was queued by another receiver in the meantime.
        earlier = _earlier(sop_instance_uid, pixel_sha256, source, ds)
        if earlier is None:
            raise
        return earlier
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
    """Analyses the analysis copy of a received instance through the analysis core (audit source
    `pacs`), then queues its result objects (the SR; a parametric map and a secondary capture per
    positive finding) and tries to send them. Idempotent: a redelivered task finds the row no
    longer queued and does nothing."""
    received = ReceivedInstance.objects.get(pk=received_id)
    if received.state != ReceivedInstance.QUEUED or received.prediction_id:
        return received
    try:
        prediction = analyse(
            upload=dataset_bytes,
            file_name=f"{received.sop_instance_uid}.dcm",
            user=None,
            source=Prediction.SOURCE_PACS,
        )
    except Refused as exc:  # pixel data that cannot be decoded, too many pixels, a lateral, ...
        return _finish(received, ReceivedInstance.SKIPPED, f"not analysed: {exc}", exc.code)
    except Unavailable as exc:  # no model, non-finite outputs, storage or database down
        return _finish(received, ReceivedInstance.FAILED, f"analysis failed: {exc}", exc.code)

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
        # Per positive finding: its heatmap as a parametric map and as a secondary capture.
        positives = [f["name"] for f in findings if f["positive"]]
        for kind in (ResultObject.KIND_PM, ResultObject.KIND_SC):
            series = generate_uid()
            for number, name in enumerate(positives, start=1):
                results.append(
                    ResultObject(
                        received=received,
                        kind=kind,
                        finding=name,
                        series_instance_uid=series,
                        sop_instance_uid=generate_uid(),
                        instance_number=number,
                    )
                )
        ResultObject.objects.bulk_create(results)
    for result in ResultObject.objects.filter(received=received):
        result_deliver(result_id=result.pk)
    return received


def _finish(received: ReceivedInstance, state: str, reason: str, code: str = "") -> ReceivedInstance:
    refusal_counted(door="pacs", code=code, status=422 if state == ReceivedInstance.SKIPPED else 503)
    received.state = state
    received.reason = reason
    received.code = code
    received.finished_at = timezone.now()
    received.save(update_fields=["state", "reason", "code", "finished_at"])
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
    the object itself (4xx), or the object cannot be built LUNGSITE_PACS_BUILD_ATTEMPTS times, it is
    `failed` with the reason (visible on the worklist)."""
    from pacs import dicomweb
    from pacs.results import result_dataset

    if not _claim(result_id):
        return ResultObject.objects.get(pk=result_id)
    result = ResultObject.objects.select_related("received__prediction__model").get(pk=result_id)
    received = result.received
    result.attempts += 1
    values: tuple[str, ...] = ()
    try:
        header = dicomweb.instance_header(
            study=received.study_instance_uid,
            series=received.series_instance_uid,
            sop=received.sop_instance_uid,
        )
        values = phi.patient_values(header)
        try:
            dataset = result_dataset(result=result, header=header)
        except Exception as exc:  # noqa: BLE001 - whatever a source's values make a builder raise
            return _build_failed(result, exc, values)
        finally:
            del header  # the patient module lives in memory for this send only
        with phi.patient_values_in_hand(values):
            dicomweb.stow(dataset=dataset, study=received.study_instance_uid)
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
        result.last_error = phi.redact(f"{type(exc).__name__}: {exc}", values)[:2000]
        result.next_try_at = timezone.now() + retry_delay(result.attempts)
        result.save(update_fields=["attempts", "next_try_at", "last_error"])
        with phi.patient_values_in_hand(values):
            logger.exception("result %s could not be sent", result.pk)
        return result
    result.state = ResultObject.SENT
    result.sent_at = timezone.now()
    result.last_error = ""
    result.save(update_fields=["state", "attempts", "sent_at", "last_error"])
    return result


def _build_failed(result: ResultObject, exc: Exception, values: tuple[str, ...]) -> ResultObject:
    """A result that cannot be built: tried again later, failed with the reason after its attempts."""
    reason = phi.redact(f"{type(exc).__name__}: {exc}", values)[:1500]
    with phi.patient_values_in_hand(values):
        logger.error("result %s cannot be built (attempt %s): %s", result.pk, result.attempts, reason)
    if result.attempts >= settings.LUNGSITE_PACS_BUILD_ATTEMPTS:
        result.state = ResultObject.FAILED
        result.last_error = (
            f"the result cannot be built from the source's header ({reason}); tried {result.attempts} times"
        )
    else:
        result.next_try_at = timezone.now() + retry_delay(result.attempts)
        result.last_error = f"the result cannot be built from the source's header ({reason}); trying again"
    result.save(update_fields=["state", "attempts", "next_try_at", "last_error"])
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
