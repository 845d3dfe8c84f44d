"""Batch jobs, start to finish: `job_create` checks a submission, stages its images and queues
them; the worker's task calls `job_images_analyse` on a chunk of them; `job_cancel` stops a job.
Pages, the REST API, `manage.py predict_folder` and the PACS all call these.

Images are analysed by the one analysis core (analysis.services.analyse_batch): the same checks,
refusals, stored copy, audit row (source "batch", with the member's file name) and honesty
statement as a single upload, with the forward pass batched. A task that runs twice (its worker
was killed before acknowledging it) finds the image already linked to its row and logs nothing
again: the core writes the row inside the transaction where `_claim` locks the job image and
`_link` points it at the row, and the one-to-one link makes that hold across workers and hosts.

Errors are common.errors.LungsiteError: a Refused submission is a 4xx for the caller; an image the
core refuses is `refused` with its message; one whose model gave non-finite outputs is `failed`
with that reason; an Unavailable outage (storage, database, no model) makes the task retry."""

from __future__ import annotations

import io
import logging
from typing import IO, TYPE_CHECKING

from django.conf import settings
from django.core.files.base import File
from django.core.files.storage import storages
from django.db import transaction
from django.db.models import Count, Sum
from django.utils import timezone

from analysis.services import Case, analyse_batch
from common.errors import LungsiteError, Refused, StorageUnavailable
from common.metrics import refusal_counted
from jobs.intake import ArchiveRefused, Limits, submission_members
from jobs.models import JobImage, PredictionJob
from registry.selectors import model_version_get_active

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

logger = logging.getLogger(__name__)

AUDIT_SOURCE = "batch"
# Threads that read and decode a chunk's images while the model runs on the previous batch.
DECODE_THREADS = 2


def _staging():
    # The images wait in the shared image store, so a worker on any host can read them.
    return storages["xray_images"]


def _limits(user: AbstractBaseUser | None) -> Limits:
    """The job's limits; its total also leaves room for the user's jobs still waiting (staged bytes
    of pending images), so no one user can fill the image store."""
    total = settings.LUNGSITE_MAX_JOB_MB * 1024 * 1024
    if getattr(user, "pk", None):
        waiting = JobImage.objects.filter(job__user=user, state=JobImage.STATE_PENDING).aggregate(
            n=Sum("size")
        )
        room = settings.LUNGSITE_MAX_USER_INFLIGHT_MB * 1024 * 1024 - (waiting["n"] or 0)
        total = max(0, min(total, room))
    return Limits(
        member_bytes=settings.LUNGSITE_MAX_UPLOAD_MB * 1024 * 1024,
        total_bytes=total,
        images=settings.LUNGSITE_MAX_JOB_IMAGES,
    )


def job_create(
    *, user: AbstractBaseUser | None, source: str, files: list[tuple[str, IO[bytes] | bytes]]
) -> PredictionJob:
    """A job over `files` ((name, file object or bytes): images, or ZIPs of images), queued for the
    workers. Members are read and staged one at a time (jobs.intake), never all in memory.

    Members that cannot be analysed (unsafe names, nested archives, empty, not an image, past the
    limits) become refused rows with their code and reason and nothing stored. Raises Refused when
    nothing in the submission can be read, StorageUnavailable when the image store refuses the
    staged bytes."""
    if not files:
        raise Refused("The submission holds no files.", code="empty")
    files = [(name, io.BytesIO(data) if isinstance(data, bytes) else data) for name, data in files]
    staged: list[str] = []
    try:
        with transaction.atomic():
            job = PredictionJob.objects.create(
                user=user if getattr(user, "pk", None) else None,
                source=source,
                model_at_start=model_version_get_active(),
            )

            def stage(handle) -> str:
                name = _staging().save(f"jobs/{job.pk}/{len(staged)}.bin", File(handle))
                staged.append(name)
                return name

            rows = []
            try:
                for position, member in enumerate(submission_members(files, _limits(user), stage)):
                    row = JobImage(job=job, position=position, name=member.name[:512], size=member.size)
                    if member.accepted:
                        row.sha256, row.staged_name = member.sha256, member.staged
                    else:
                        row.state, row.code = JobImage.STATE_REFUSED, member.code
                        row.reason = f"{member.name!r} {member.reason}."
                    rows.append(row)
            except ArchiveRefused as exc:
                raise Refused(str(exc), code="bad_archive") from exc
            if not rows:
                raise Refused("The submission holds no files (an empty archive?).", code="empty")
            JobImage.objects.bulk_create(rows)
            job.total = len(rows)
            job.refused = sum(1 for row in rows if row.state == JobImage.STATE_REFUSED)
            if not staged:
                job.state, job.finished_at = PredictionJob.STATE_DONE, timezone.now()
            job.save(update_fields=["total", "refused", "state", "finished_at"])
            transaction.on_commit(lambda: _enqueue(job.pk))
    except Exception as exc:
        for name in staged:
            _delete_quietly(name)
        if isinstance(exc, LungsiteError):
            raise
        raise StorageUnavailable(
            f"The job could not be stored ({type(exc).__name__}); nothing was queued."
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
    """Analyses the pending images among `image_ids`, LUNGSITE_BATCH_SIZE at a time, through the
    analysis core (the active version is read again for every batch, so an activation during a job
    is picked up between batches; each image is logged at most once). Raises Unavailable when
    storage, the database or the model is unavailable (the task retries; what was logged stays
    logged)."""
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
        for start in range(0, len(items), size):
            _analyse_batch(job, items[start : start + size])
    finally:
        _job_counts_refresh(job_id)


def _analyse_batch(job: PredictionJob, items: list[JobImage]) -> None:
    cases, analysed = [], []
    for item in items:
        data = _staged_bytes(item)
        if data is None:
            reason = f"{item.name!r}: its staged bytes are missing"
            _item_finish(item, state=JobImage.STATE_REFUSED, reason=reason, code="missing")
            continue
        cases.append(Case(data=data, file_name=item.name, claim=_claim(item), link=_link(item)))
        analysed.append(item)
    outcomes = analyse_batch(cases=cases, user=job.user, source=AUDIT_SOURCE, decode_threads=DECODE_THREADS)
    for item, outcome in zip(analysed, outcomes, strict=True):
        if isinstance(outcome, Refused):
            _item_finish(
                item,
                state=JobImage.STATE_REFUSED,
                reason=f"{item.name!r}: {outcome}",
                code=outcome.code,
                status=outcome.status,
            )
        elif isinstance(outcome, LungsiteError):  # non-finite outputs: retrying cannot help
            _item_finish(
                item,
                state=JobImage.STATE_FAILED,
                reason=f"{item.name!r}: {outcome}",
                code=outcome.code,
                status=outcome.status,
            )
        else:  # logged (and linked in its transaction), or already logged by another worker
            _delete_quietly(item.staged_name)


def _staged_bytes(item: JobImage) -> bytes | None:
    """The member's staged bytes, None when they are missing. StorageUnavailable when the store fails."""
    try:
        with _staging().open(item.staged_name, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except Exception as exc:  # noqa: BLE001 - any backend failure means "storage unavailable"
        raise StorageUnavailable(f"The image store is unavailable ({type(exc).__name__}).") from exc


def _claim(item: JobImage):
    """Runs in the row's transaction: locks the job image and says whether it is still to log."""

    def claim() -> bool:
        locked = JobImage.objects.select_for_update().get(pk=item.pk)
        return locked.state == JobImage.STATE_PENDING and not locked.prediction_id

    return claim


def _link(item: JobImage):
    def link(prediction) -> None:
        JobImage.objects.filter(pk=item.pk).update(
            prediction=prediction, model_version=prediction.model, state=JobImage.STATE_DONE
        )

    return link


def _item_finish(item: JobImage, *, state: str, reason: str, code: str, status: int = 400) -> None:
    updated = JobImage.objects.filter(pk=item.pk, state=JobImage.STATE_PENDING).update(
        state=state, reason=reason, code=code
    )
    if updated:
        refusal_counted(door="job", code=code, status=status)
    if updated:
        _delete_quietly(item.staged_name)


def job_images_fail(*, job_id: int, image_ids: list[int], reason: str, code: str = "error") -> None:
    """Marks the still pending images among `image_ids` failed with `reason` (a task that gave up)."""
    JobImage.objects.filter(pk__in=image_ids, job_id=job_id, state=JobImage.STATE_PENDING).update(
        state=JobImage.STATE_FAILED, reason=reason, code=code
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
