"""Batch jobs, start to finish: `job_create` checks a submission, stages its images and queues
them; the worker's task calls `job_images_analyse` on a chunk of them; `job_cancel` stops a job.
Pages, the REST API, `manage.py predict_folder` and the PACS all call these.

Each analysed image gets one audit row (source "batch") naming the version that produced it, written
with its image or not at all (audit.services.prediction_log). A task that runs twice (its worker
was killed before acknowledging it) finds the image already linked to its row and logs nothing
again: the row lock and the state check below, and the one-to-one link, make that hold across
workers and hosts."""

from __future__ import annotations

import hashlib
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

from django.conf import settings
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Count
from django.utils import timezone

from jobs.intake import ArchiveRefused, Limits, submission_members
from jobs.models import JobImage, PredictionJob

if TYPE_CHECKING:
    import numpy as np
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

AUDIT_SOURCE = "batch"
# Threads that read and decode a chunk's images while the model runs on the previous batch.
DECODE_THREADS = 2


class JobRefused(Exception):
    """The submission as a whole cannot become a job (a 4xx): `code`, `status` and a message."""

    def __init__(self, message: str, *, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


class JobUnavailable(Exception):
    """Storage or database unavailable (a 503; in a worker, the task is retried)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code


def _decode(data: bytes, name: str) -> np.ndarray:
    """bytes -> (H, W) uint8 or float32 in [0, 1]. The one place jobs/ decodes an image: in a
    child process bounded in time and memory, as for a single upload."""
    from engine import decode_pool

    return decode_pool.decode_gray(
        data,
        name,
        timeout_s=settings.LUNGSITE_DECODE_TIMEOUT_S,
        max_mb=settings.LUNGSITE_DECODE_MAX_MB,
        max_pixels=settings.LUNGSITE_MAX_PIXELS,
        allow_burned_in_annotation=settings.LUNGSITE_ALLOW_BURNED_IN_ANNOTATION,
    )


def _decode_error():
    from engine.decode import DecodeError

    return DecodeError


def _staging():
    # The images wait in the shared image store, so a worker on any host can read them.
    return storages["xray_images"]


def _limits() -> Limits:
    return Limits(
        member_bytes=settings.LUNGSITE_MAX_UPLOAD_MB * 1024 * 1024,
        total_bytes=settings.LUNGSITE_MAX_JOB_MB * 1024 * 1024,
        images=settings.LUNGSITE_MAX_JOB_IMAGES,
    )


def job_create(
    *, user: AbstractBaseUser | None, source: str, files: list[tuple[str, bytes]]
) -> PredictionJob:
    """A job over `files` ((name, bytes): images, or ZIPs of images), queued for the workers.

    Members that cannot be analysed (unsafe names, nested archives, empty, not an image, past the
    limits) become refused rows with their reason and nothing stored. Raises JobRefused when nothing
    in the submission can be read, JobUnavailable when the image store refuses the staged bytes."""
    from registry.selectors import model_version_get_active

    if not files:
        raise JobRefused("The submission holds no files.", code="empty")
    try:
        members = submission_members(files, _limits())
    except ArchiveRefused as exc:
        raise JobRefused(str(exc), code="bad_archive") from exc
    if not members:
        raise JobRefused("The submission holds no files (an empty archive?).", code="empty")

    staged: list[str] = []
    try:
        with transaction.atomic():
            job = PredictionJob.objects.create(
                user=user if getattr(user, "pk", None) else None,
                source=source,
                model_at_start=model_version_get_active(),
                total=len(members),
                refused=sum(1 for m in members if m.data is None),
            )
            rows = []
            for position, member in enumerate(members):
                row = JobImage(job=job, position=position, name=member.name[:512], size=member.size)
                if member.data is None:
                    row.state, row.reason = JobImage.STATE_REFUSED, f"{member.name!r} {member.reason}."
                else:
                    row.sha256 = member.sha256
                    row.staged_name = _staging().save(
                        f"jobs/{job.pk}/{position}.bin", ContentFile(member.data)
                    )
                    staged.append(row.staged_name)
                rows.append(row)
            JobImage.objects.bulk_create(rows)
            if not staged:
                job.state, job.finished_at = PredictionJob.STATE_DONE, timezone.now()
                job.save(update_fields=["state", "finished_at"])
            transaction.on_commit(lambda: _enqueue(job.pk))
    except Exception as exc:
        for name in staged:
            _delete_quietly(name)
        if isinstance(exc, JobRefused):
            raise
        raise JobUnavailable(
            f"The job could not be stored ({type(exc).__name__}); nothing was queued.", code="unavailable"
        ) from exc
    return job


def _enqueue(job_id: int) -> None:
    from jobs.tasks import job_images_analyse_task

    ids = list(
        JobImage.objects.filter(job_id=job_id, state=JobImage.STATE_PENDING)
        .order_by("position")
        .values_list("pk", flat=True)
    )
    per_task = max(1, settings.LUNGSITE_BATCH_SIZE * settings.LUNGSITE_JOB_BATCHES_PER_TASK)
    for start in range(0, len(ids), per_task):
        job_images_analyse_task.delay(job_id, ids[start : start + per_task])


def job_cancel(*, job: PredictionJob) -> PredictionJob:
    """Stops a job: its images not analysed yet are marked cancelled (their staged bytes removed);
    images already logged stay logged. Cancelling a finished job changes nothing."""
    with transaction.atomic():
        job = PredictionJob.objects.select_for_update().get(pk=job.pk)
        if job.state in (PredictionJob.STATE_DONE, PredictionJob.STATE_CANCELLED):
            return job
        pending = JobImage.objects.filter(job=job, state=JobImage.STATE_PENDING)
        names = list(pending.values_list("staged_name", flat=True))
        pending.update(state=JobImage.STATE_CANCELLED, reason="The job was cancelled.")
        job.state, job.finished_at = PredictionJob.STATE_CANCELLED, timezone.now()
        job.save(update_fields=["state", "finished_at"])
    for name in names:
        _delete_quietly(name)
    return job


def job_image_analyse(*, image: JobImage) -> JobImage:
    """Analyses one image of a job (if still pending) and returns its row as it ends."""
    job_images_analyse(job_id=image.job_id, image_ids=[image.pk])
    image.refresh_from_db()
    return image


def job_images_analyse(*, job_id: int, image_ids: list[int]) -> None:
    """Analyses the pending images among `image_ids`, LUNGSITE_BATCH_SIZE at a time: decoding on
    threads ahead of the model, the active version read again before every batch (an activation
    during a job is picked up between batches), each image logged at most once. Images that do not
    decode are refused with the decoder's message. Raises JobUnavailable when storage or the
    database fails (the task retries; what was logged stays logged)."""
    job = PredictionJob.objects.filter(pk=job_id).first()
    if job is None or job.state == PredictionJob.STATE_CANCELLED:
        return
    if job.state == PredictionJob.STATE_QUEUED:
        PredictionJob.objects.filter(pk=job_id, state=PredictionJob.STATE_QUEUED).update(
            state=PredictionJob.STATE_RUNNING
        )
    items = list(JobImage.objects.filter(pk__in=image_ids, job_id=job_id, state=JobImage.STATE_PENDING))
    items.sort(key=lambda item: item.position)
    size = max(1, settings.LUNGSITE_BATCH_SIZE)
    try:
        with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="lungsite-job") as pool:
            decoding = [pool.submit(_read_and_decode, item) for item in items]
            for start in range(0, len(items), size):
                batch = list(zip(items[start : start + size], decoding[start : start + size], strict=True))
                _analyse_batch(job, batch, pool)
    finally:
        _job_counts_refresh(job_id)


def _read_and_decode(item: JobImage):
    """(bytes, picture) or the DecodeError; storage errors propagate."""
    try:
        with _staging().open(item.staged_name, "rb") as handle:
            data = handle.read()
    except FileNotFoundError:
        return None, "its staged bytes are missing from the image store"
    except Exception as exc:  # noqa: BLE001 - any backend failure means "storage unavailable"
        raise JobUnavailable(
            f"The image store is unavailable ({type(exc).__name__}).", code="storage"
        ) from exc
    try:
        return data, _decode(data, item.name)
    except _decode_error() as exc:
        return data, str(exc)


def _analyse_batch(job: PredictionJob, batch: list, pool: ThreadPoolExecutor) -> None:
    import numpy as np

    from engine.pipeline import predict_batch, preprocess
    from registry.cache import NoActiveModel, get_active
    from registry.models import DEFAULT_PREPROCESSING

    ready = []
    for item, future in batch:
        data, image = future.result()
        if isinstance(image, str) or data is None:
            _item_finish(item, state=JobImage.STATE_REFUSED, reason=f"{item.name!r}: {image}")
        else:
            ready.append((item, data, image))
    if not ready:
        return
    started = time.perf_counter()
    try:
        serving = get_active()  # read per batch: this is where a hot swap takes effect
    except NoActiveModel as exc:
        raise JobUnavailable(str(exc), code="no_model") from exc
    version = serving.version
    spec = version.preprocessing or DEFAULT_PREPROCESSING
    tensors = list(pool.map(lambda entry: preprocess(entry[2], spec)[0], ready))
    outputs = predict_batch(serving.model, np.stack(tensors))
    storing = [pool.submit(_store, data, image) for _, data, image in ready]
    per_image_start = started  # latency_ms of a batch row: the batch's time, shared
    for (item, data, image), output, stored in zip(ready, outputs, storing, strict=True):
        _item_log(job, item, version, data, image, output, stored, per_image_start)


def _store(data: bytes, image):
    from audit.services import StorageUnavailable, image_store

    try:
        return image_store(data=data, image=image)
    except StorageUnavailable as exc:
        raise JobUnavailable(str(exc), code="storage") from exc


def _item_log(job, item, version, data, image, output, storing, started) -> None:
    from analysis.results import results_json
    from audit.services import AuditWriteError, image_discard, prediction_log

    stored = storing.result()  # JobUnavailable when the store refused
    try:
        with transaction.atomic():
            locked = JobImage.objects.select_for_update().get(pk=item.pk)
            if locked.state != JobImage.STATE_PENDING or locked.prediction_id:
                image_discard(stored)  # another worker logged it first, or the job was cancelled
                return
            prediction = prediction_log(
                version=version,
                data=data,
                image=image,
                results=results_json(version=version, probabilities=output.probabilities),
                cams=output.cams,
                image_sha256=item.sha256 or hashlib.sha256(data).hexdigest(),
                user=job.user,
                source=AUDIT_SOURCE,
                started=started,
                stored=stored,
            )
            locked.prediction = prediction
            locked.model_version = version
            locked.state = JobImage.STATE_DONE
            locked.save(update_fields=["prediction", "model_version", "state"])
    except AuditWriteError as exc:
        raise JobUnavailable(str(exc), code="database") from exc
    except Exception:
        image_discard(stored)  # the row was rolled back with the transaction: no orphaned file
        raise
    _delete_quietly(item.staged_name)


def _item_finish(item: JobImage, *, state: str, reason: str) -> None:
    updated = JobImage.objects.filter(pk=item.pk, state=JobImage.STATE_PENDING).update(
        state=state, reason=reason
    )
    if updated:
        _delete_quietly(item.staged_name)


def job_images_fail(*, job_id: int, image_ids: list[int], reason: str) -> None:
    """Marks the still pending images among `image_ids` failed with `reason` (a task that gave up)."""
    JobImage.objects.filter(pk__in=image_ids, job_id=job_id, state=JobImage.STATE_PENDING).update(
        state=JobImage.STATE_FAILED, reason=reason
    )
    _job_counts_refresh(job_id)


def _job_counts_refresh(job_id: int) -> None:
    """The job's counts from its images' states (idempotent), and `done` once none is pending."""
    with transaction.atomic():
        job = PredictionJob.objects.select_for_update().get(pk=job_id)
        counts = dict(JobImage.objects.filter(job_id=job_id).values_list("state").annotate(n=Count("pk")))
        job.done = counts.get(JobImage.STATE_DONE, 0)
        job.refused = counts.get(JobImage.STATE_REFUSED, 0)
        job.failed = counts.get(JobImage.STATE_FAILED, 0)
        if job.state != PredictionJob.STATE_CANCELLED and not counts.get(JobImage.STATE_PENDING):
            job.state = PredictionJob.STATE_DONE
            job.finished_at = job.finished_at or timezone.now()
        job.save(update_fields=["done", "refused", "failed", "state", "finished_at"])


def _delete_quietly(name: str) -> None:
    if not name:
        return
    try:
        storage = _staging()
        if storage.exists(name):
            storage.delete(name)
    except Exception:  # noqa: BLE001 - a leftover staged file costs disk, not correctness
        logger.warning("could not remove staged job file %s", name)
