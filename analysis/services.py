"""One prediction, start to finish: check the upload, decode, predict with the model that serves
now, and log it. Pages and the REST API both call `prediction_create`."""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from django.conf import settings

from audit.models import Prediction
from engine.dicom_checks import dicom_upload_refusal

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser
    from django.core.files.uploadedfile import UploadedFile

logger = logging.getLogger(__name__)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


class PredictionRefused(Exception):
    """The upload cannot be analysed (a 4xx): `code`, `status` and a message saying why."""

    def __init__(self, message: str, *, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class PredictionUnavailable(Exception):
    """The service cannot predict right now (a 503): no model, storage or database down."""

    status = 503

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def _read_upload(upload: UploadedFile, max_bytes: int) -> bytes:
    size = getattr(upload, "size", None)
    if size is not None and size > max_bytes:
        raise PredictionRefused(
            f"The file is {size / 1048576:.1f} MB; the limit is {settings.LUNGSITE_MAX_UPLOAD_MB} MB.",
            code="too_large",
            status=413,
        )
    if hasattr(upload, "seek"):
        upload.seek(0)
    data = upload.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise PredictionRefused(
            f"The file is larger than the {settings.LUNGSITE_MAX_UPLOAD_MB} MB limit.",
            code="too_large",
            status=413,
        )
    if not data:
        raise PredictionRefused("The file is empty.", code="empty", status=400)
    return data


def _store_upload(data: bytes, image):
    """Runs on the storage thread: the stored copy and both hashes (hashlib and the file write
    release the GIL, so this overlaps the forward pass)."""
    from audit.services import image_store

    return image_store(data=data, image=image), hashlib.sha256(data).hexdigest()


def _storage_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # A few threads per process: each request hands over one store and waits for it.
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lungsite-store")
        return _pool


def prediction_create(*, upload: UploadedFile, user: AbstractBaseUser | None, source: str) -> Prediction:
    """Analyses an uploaded X-ray and logs it. Returns the written Prediction row.

    Raises PredictionRefused (4xx: too large, empty, not a readable image, too many pixels, ...)
    or PredictionUnavailable (503: no model can serve, image storage or database unavailable).
    Nothing is stored when it raises."""
    from analysis.results import results_json
    from audit.services import AuditWriteError, StorageUnavailable, prediction_log
    from engine import decode_pool
    from engine.decode import DecodeError
    from engine.pipeline import NonFiniteOutput, predict, preprocess
    from learning.shadow import shadow_submit
    from registry.cache import NoActiveModel, get_active, model_withdraw
    from registry.models import DEFAULT_PREPROCESSING

    started = time.perf_counter()
    data = _read_upload(upload, settings.LUNGSITE_MAX_UPLOAD_MB * 1024 * 1024)
    try:
        image = decode_pool.decode_gray(
            data,
            getattr(upload, "name", "") or "",
            timeout_s=settings.LUNGSITE_DECODE_TIMEOUT_S,
            max_mb=settings.LUNGSITE_DECODE_MAX_MB,
            max_pixels=settings.LUNGSITE_MAX_PIXELS,
            allow_burned_in_annotation=settings.LUNGSITE_ALLOW_BURNED_IN_ANNOTATION,
        )
    except DecodeError as exc:
        raise PredictionRefused(str(exc), code=exc.code, status=exc.status) from exc
    refusal = dicom_upload_refusal(data)
    if refusal is not None:
        # A lateral, another body part or modality: the models were made for frontal chest films.
        raise PredictionRefused(f"{refusal[:1].upper()}{refusal[1:]}.", code="not_frontal_chest", status=422)

    try:
        serving = get_active()
    except NoActiveModel as exc:
        raise PredictionUnavailable(str(exc), code="no_model") from exc

    # The upload is a readable image and a model will serve: store it while the model runs (the
    # write and the hashes do not depend on the result; to Supabase Storage the write is a network
    # round trip). Whatever fails after this point removes the stored file again.
    storing = _storage_pool().submit(_store_upload, data, image)
    try:
        version = serving.version
        output = predict(serving.model, preprocess(image, version.preprocessing or DEFAULT_PREPROCESSING))
    except NonFiniteOutput as exc:
        _discard_when_stored(storing)
        model_withdraw(serving, str(exc))
        raise PredictionUnavailable(
            f"Model version {version.version_name} gave results that are not finite numbers, so none "
            "are returned; it no longer serves here and the last good version (if any) takes over. "
            "Nothing was recorded; try again.",
            code="model_output_not_finite",
        ) from exc
    except BaseException:
        _discard_when_stored(storing)
        raise
    try:
        stored, image_sha256 = storing.result()
    except StorageUnavailable as exc:
        raise PredictionUnavailable(_nothing_recorded(exc), code="storage_unavailable") from exc
    try:
        prediction = prediction_log(
            version=version,
            data=data,
            image=image,
            results=results_json(version=version, probabilities=output.probabilities),
            cams=output.cams,
            image_sha256=image_sha256,
            user=user,
            source=source,
            started=started,
            stored=stored,
            file_name=getattr(upload, "name", "") or "",
        )
    except AuditWriteError as exc:
        raise PredictionUnavailable(_nothing_recorded(exc), code="database_unavailable") from exc
    # Issue 23: the shadow version (if any) scores it on its own thread, after the result is logged.
    shadow_submit(prediction=prediction, image=image)
    return prediction


def _discard_when_stored(storing) -> None:
    from audit.services import image_discard

    try:
        stored, _ = storing.result()
    except Exception:  # noqa: BLE001 - nothing was stored
        return
    image_discard(stored)


def _nothing_recorded(exc: Exception) -> str:
    # The audit service's messages already name the store and the error type ("The image store is
    # unavailable (OSError).") and leave out backend details such as paths or hosts.
    return f"{str(exc).rstrip('.')}; nothing was recorded."
