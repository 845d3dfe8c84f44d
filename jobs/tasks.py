"""Celery tasks of the batch jobs: small, taking ids, calling jobs.services. acks_late with
idempotent work: a task redelivered after its worker died logs only what was not logged yet.

Every task ends in a reason: an outage (common.errors.Unavailable: storage, database, no model) is
retried with a backoff and, once the retries are spent, fails the task's images with its message;
any other exception fails them at once with its type and message, so a job never stays `running`
with images pending."""

import logging

from celery import shared_task

from common.errors import Unavailable
from jobs import services

logger = logging.getLogger(__name__)

MAX_RETRIES = 3


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def job_images_analyse_task(self, job_id: int, image_ids: list[int]) -> None:
    try:
        services.job_images_analyse(job_id=job_id, image_ids=image_ids)
    except Unavailable as exc:
        if self.request.retries >= MAX_RETRIES or self.request.is_eager:
            services.job_images_fail(
                job_id=job_id,
                image_ids=image_ids,
                reason=f"Not analysed: {exc} (gave up after retries).",
                code=exc.code,
            )
            return
        raise self.retry(exc=exc, countdown=5 * (self.request.retries + 1)) from exc
    except Exception as exc:  # noqa: BLE001 - unexpected: the images fail with the reason, the job ends
        logger.exception("job %s: analysing images %s failed", job_id, image_ids)
        services.job_images_fail(
            job_id=job_id, image_ids=image_ids, reason=f"Not analysed: {type(exc).__name__}: {exc}"
        )
