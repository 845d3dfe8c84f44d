"""The one analysis core. Every door hands its images here: the upload page and the REST API
(`analyse`), the batch-job worker (`analyse_batch`), the PACS (`analyse`, from its Celery task); the
shadow run scores what this core logged. So a case gets the same checks, refusals, stored copy,
audit row and honesty statement whichever way it came in.

One analysis, in order:
 1. size          empty: 400 `empty`; over LUNGSITE_MAX_UPLOAD_MB: 413 `too_large`
 2. decode        engine.decode_pool: in a child process bounded in time and memory; a large file
                  waits for a decode slot (analysis.decode_slots) so it cannot crowd others out
 3. DICOM checks  in the same child, from the header before the pixels (engine.dicom_checks):
                  burned-in annotation, frontal chest (modality CR/DX, body part, view); fail closed
 4. model         registry.cache.get_active: 503 `no_model` when nothing can serve
 5. forward       engine.pipeline: one pass gives the scores, every finding's heatmap and the
                  pooled features; outputs that are not finite withdraw the version (503
                  `model_output_not_finite`)
 5b. assessment   `assess`: the version's calibration applied (learning.calibration, the one
                  place serving calibrates), the evaluation in force, the image's distance from
                  what it measured (learning.ood; with LUNGSITE_OOD_REFUSE an input outside it is
                  refused, 422 `outside_evaluation`), the honesty statement, the input's facts
 6. stored copy   audit.services.image_store: a PNG of the decoded pixels, never the upload,
                  written by the decoding process (engine.stored_image) in step 2
 7. audit row     audit.services.prediction_log, with the result of analysis.results (findings,
                  version, honesty statement and evaluation in force as they stand now)
 8. shadow        learning.shadow.shadow_submit, off the caller's path (single analyses only)

Every refusal and outage is a common.errors.LungsiteError raised where it is found; nothing is
written when one is raised (no row without its image, no image without its row).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import transaction

from analysis.decode_slots import decode_slot
from analysis.results import results_json
from audit.models import Prediction
from audit.services import StoredUpload, image_discard, image_store, prediction_log
from common.errors import LungsiteError, NonFiniteOutput, Refused
from engine import decode_pool
from engine.input_facts import input_facts
from engine.pipeline import PredictionOutput, predict, predict_batch, preprocess
from learning.calibration import calibration_apply
from learning.ood import ood_assess
from learning.shadow import shadow_submit
from registry.cache import ServingModel, get_active, model_withdraw
from registry.models import DEFAULT_PREPROCESSING, LOOK_UP

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

SOURCES = (Prediction.SOURCE_WEB, Prediction.SOURCE_API, Prediction.SOURCE_PACS, Prediction.SOURCE_BATCH)

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


@dataclass
class Case:
    """One image a door hands to `analyse_batch`. `claim` (optional) runs inside the transaction
    that writes the row, with the door's own rows locked, and returns False when the case must not
    be logged after all (another worker logged it, the job was cancelled); `link` runs in the same
    transaction with the new Prediction (e.g. to point a job image at it)."""

    data: bytes
    file_name: str = ""
    claim: Callable[[], bool] | None = None
    link: Callable[[Prediction], None] | None = None


# --------------------------------------------------------------------------------------------
# Steps 1-3: the input


def max_upload_bytes() -> int:
    return settings.LUNGSITE_MAX_UPLOAD_MB * 1024 * 1024


def read_bounded(upload: bytes | IO[bytes]) -> bytes:
    """Step 1: the bytes of an upload (bytes or a file object), refused when empty or past the
    size limit without reading more than the limit."""
    limit = max_upload_bytes()
    too_large = Refused(
        f"The file is larger than the {settings.LUNGSITE_MAX_UPLOAD_MB} MB limit.",
        code="too_large",
        status=413,
    )
    if isinstance(upload, bytes | bytearray | memoryview):
        data = bytes(upload)
    else:
        size = getattr(upload, "size", None)
        if size is not None and size > limit:
            raise Refused(
                f"The file is {size / 1048576:.1f} MB; the limit is {settings.LUNGSITE_MAX_UPLOAD_MB} MB.",
                code="too_large",
                status=413,
            )
        if hasattr(upload, "seek"):
            upload.seek(0)
        data = upload.read(limit + 1)
    if len(data) > limit:
        raise too_large
    if not data:
        raise Refused("The file is empty.", code="empty")
    return data


def decode_checked(
    data: bytes, file_name: str = "", *, fair_for: str | None = None
) -> tuple[np.ndarray, Future]:
    """Steps 2-3 (and the encoding of step 6): the decoded picture ((H, W) uint8 or float32 in
    [0, 1]) of bytes that passed the checks, and a Future of the stored copy's PNG of it, which the
    decoding process writes while the caller runs the model. Raises DecodeError (a Refused) naming
    what was wrong. `fair_for` (a user key) makes a large file wait for a decode slot
    (analysis.decode_slots), as uploads on web threads do."""
    slot = decode_slot(size=len(data), user_key=fair_for) if fair_for else contextlib.nullcontext()
    with slot:
        image, copy = decode_pool.decode_with_stored_copy(
            data,
            file_name,
            timeout_s=settings.LUNGSITE_DECODE_TIMEOUT_S,
            max_mb=settings.LUNGSITE_DECODE_MAX_MB,
            max_pixels=settings.LUNGSITE_MAX_PIXELS,
            allow_burned_in_annotation=settings.LUNGSITE_ALLOW_BURNED_IN_ANNOTATION,
            frontal_chest_only=True,
        )
    # Received on a storage thread whatever happens next, so the decoding process always returns
    # to the pool (a PNG nobody stores is dropped).
    return image, _storage_pool().submit(copy.result)


# --------------------------------------------------------------------------------------------
# Steps 4-5: the model


def serving_model() -> ServingModel:
    """Step 4: the version that serves now (read per call: an activation takes effect here)."""
    return get_active()


def _tensor(serving: ServingModel, image: np.ndarray) -> np.ndarray:
    return preprocess(image, serving.version.preprocessing or DEFAULT_PREPROCESSING)


def _withdrawn(serving: ServingModel, exc: NonFiniteOutput) -> NonFiniteOutput:
    model_withdraw(serving, str(exc))
    return NonFiniteOutput(
        f"Model version {serving.version.version_name} gave results that are not finite numbers, so "
        "none are returned; it no longer serves here and the last good version (if any) takes over. "
        "Nothing was recorded; try again."
    )


# --------------------------------------------------------------------------------------------
# Step 5b: the assessment


def assess(
    *,
    serving: ServingModel,
    output: PredictionOutput,
    data: bytes,
    image: np.ndarray,
    evaluation=LOOK_UP,
) -> dict:
    """Step 5b: the result of one forward pass as it will be returned and logged
    (analysis.results.results_json): the served scores (the version's calibration applied, where
    it has one), the evaluation in force (`evaluation`, looked up when not given), the image's
    distance from the features that evaluation measured, the honesty statement that follows, and
    the input's facts. Raises Refused (422 `outside_evaluation`) for an input outside what the
    version was evaluated on when LUNGSITE_OOD_REFUSE is on."""
    version = serving.version
    scores, calibrated = calibration_apply(version.calibration, version.class_names, output.probabilities)
    if evaluation is LOOK_UP:
        evaluation = version.evaluation_in_force()
    try:
        ood = ood_assess(evaluation=evaluation, features=output.features)
    except Exception:  # noqa: BLE001 - the result is still returned, without the mark; logged
        logger.exception("out-of-distribution distance of an image failed for %s", version.version_name)
        ood = None
    if ood is not None and ood["outside"] and settings.LUNGSITE_OOD_REFUSE:
        raise Refused(
            f"This image lies outside what model version {version.version_name} was evaluated on (feature "
            f"distance {ood['distance']:.1f}, threshold {ood['threshold']:.1f}): it may not be an adult "
            "frontal chest radiograph like the images of its evaluation. This site refuses such inputs; "
            "nothing was recorded.",
            code="outside_evaluation",
            status=422,
        )
    return results_json(
        version=version,
        probabilities=scores,
        calibrated=calibrated,
        honesty=version.honesty(evaluation=evaluation, ood=ood),
        ood=ood,
        input_facts=input_facts(data, image),
    )


# --------------------------------------------------------------------------------------------
# Steps 6-7: the record


def _storage_pool() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            # A few threads per process: each analysis hands over one store and waits for it. The
            # write and the hash release the GIL, so they overlap the forward pass.
            _pool = ThreadPoolExecutor(max_workers=4, thread_name_prefix="lungsite-store")
        return _pool


def _store(data: bytes, image: np.ndarray, png: Future) -> tuple[StoredUpload, str]:
    digest = hashlib.sha256(data).hexdigest()
    return image_store(data=data, image=image, png=png.result()), digest


def _discard_when_stored(storing: Future) -> None:
    try:
        stored, _ = storing.result()
    except Exception:  # noqa: BLE001 - nothing was stored
        return
    image_discard(stored)


def _record(
    *,
    case: Case,
    image: np.ndarray,
    serving: ServingModel,
    output,
    results: dict,
    storing: Future,
    user: AbstractBaseUser | None,
    source: str,
    started: float,
) -> Prediction | None:
    """Steps 6-7 for one case whose forward pass is done: the stored copy and the row, both or
    neither. None when the door's `claim` declined it (nothing kept)."""
    stored, image_sha256 = storing.result()  # StorageUnavailable: nothing was stored
    version = serving.version
    try:
        with transaction.atomic():
            if case.claim is not None and not case.claim():
                image_discard(stored)
                return None
            prediction = prediction_log(
                version=version,
                data=case.data,
                image=image,
                results=results,
                cams=output.cams,
                image_sha256=image_sha256,
                user=user,
                source=source,
                started=started,
                stored=stored,
                file_name=case.file_name,
            )
            if case.link is not None:
                case.link(prediction)
    except BaseException:
        image_discard(stored)  # the row (and the door's link) rolled back: no orphaned file
        raise
    return prediction


# --------------------------------------------------------------------------------------------
# The doors' entry points


def analyse(
    *,
    upload: bytes | IO[bytes],
    file_name: str = "",
    user: AbstractBaseUser | None,
    source: str,
) -> Prediction:
    """Analyses one image and logs it; returns the written Prediction row (its `honesty` is the
    statement every output of it must carry). Raises LungsiteError: Refused (4xx, the input) or
    Unavailable (503: no model, non-finite outputs, storage or database down). Nothing is kept
    when it raises."""
    started = time.perf_counter()
    data = read_bounded(upload)
    image, png = decode_checked(
        data, file_name, fair_for=f"user-{user.pk}" if getattr(user, "pk", None) else source
    )
    serving = serving_model()
    # The image is readable and a model will serve: store it while the model runs. Whatever fails
    # after this point removes the stored file again.
    storing = _storage_pool().submit(_store, data, image, png)
    try:
        output = predict(serving.model, _tensor(serving, image))
        results = assess(serving=serving, output=output, data=data, image=image)
    except NonFiniteOutput as exc:
        _discard_when_stored(storing)
        raise _withdrawn(serving, exc) from exc
    except BaseException:
        _discard_when_stored(storing)
        raise
    case = Case(data=data, file_name=file_name)
    prediction = _record(
        case=case,
        image=image,
        serving=serving,
        output=output,
        results=results,
        storing=storing,
        user=user,
        source=source,
        started=started,
    )
    # The shadow version (if any) scores it on its own thread, after the result is logged.
    shadow_submit(prediction=prediction, image=image)
    return prediction


def analyse_batch(
    *,
    cases: list[Case],
    user: AbstractBaseUser | None,
    source: str = Prediction.SOURCE_BATCH,
    decode_threads: int = 2,
) -> list[Prediction | LungsiteError | None]:
    """Analyses several images with one forward pass, each through the same steps as `analyse`.
    Returns one outcome per case, in order: its Prediction; the Refused error of an input that
    failed steps 1-3 (or 5b: outside what the version was evaluated on); the NonFiniteOutput error
    when the version gave non-finite outputs (it is withdrawn); or None when the case's `claim`
    declined it. Raises Unavailable (no model,
    storage or database down) for the batch: what was logged before stays logged."""
    started = time.perf_counter()
    outcomes: list[Prediction | LungsiteError | None] = [None] * len(cases)
    images: dict[int, np.ndarray] = {}
    copies: dict[int, Future] = {}

    def checked(case: Case) -> tuple[np.ndarray, Future]:
        return decode_checked(read_bounded(case.data), case.file_name)

    with ThreadPoolExecutor(max(1, decode_threads), thread_name_prefix="lungsite-batch") as pool:
        for i, future in enumerate([pool.submit(checked, case) for case in cases]):
            try:
                images[i], copies[i] = future.result()
            except Refused as exc:
                outcomes[i] = exc
        if not images:
            return outcomes
        serving = serving_model()
        order = sorted(images)
        tensors = list(pool.map(lambda i: _tensor(serving, images[i])[0], order))
        try:
            outputs = predict_batch(serving.model, np.stack(tensors))
        except NonFiniteOutput as exc:
            error = _withdrawn(serving, exc)
            for i in order:
                outcomes[i] = error
            return outcomes
        storing = {i: pool.submit(_store, cases[i].data, images[i], copies.pop(i)) for i in order}
        evaluation = serving.version.evaluation_in_force()  # one look-up for the batch
        try:
            for i, output in zip(order, outputs, strict=True):
                try:
                    results = assess(
                        serving=serving,
                        output=output,
                        data=cases[i].data,
                        image=images[i],
                        evaluation=evaluation,
                    )
                except Refused as exc:
                    _discard_when_stored(storing.pop(i))
                    outcomes[i] = exc
                    continue
                outcomes[i] = _record(
                    case=cases[i],
                    image=images[i],
                    serving=serving,
                    output=output,
                    results=results,
                    storing=storing.pop(i),
                    user=user,
                    source=source,
                    started=started,
                )
        finally:
            for future in storing.values():  # an outage stopped the loop: drop what it stored ahead
                _discard_when_stored(future)
    return outcomes
