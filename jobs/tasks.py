"""Celery tasks of the batch jobs: small, taking ids, calling jobs.services. acks_late with
idempotent work: a task redelivered after its worker died logs only what was not logged yet."""

from celery import shared_task

from jobs import services

MAX_RETRIES = 3


@shared_task(bind=True, acks_late=True, reject_on_worker_lost=True, max_retries=MAX_RETRIES)
def job_images_analyse_task(self, job_id: int, image_ids: list[int]) -> None:
    try:
        services.job_images_analyse(job_id=job_id, image_ids=image_ids)
    except services.JobUnavailable as exc:
        if self.request.retries >= MAX_RETRIES or self.request.is_eager:
            services.job_images_fail(
                job_id=job_id, image_ids=image_ids, reason=f"Not analysed: {exc} (gave up after retries)."
            )
            return
        raise self.retry(exc=exc, countdown=5 * (self.request.retries + 1)) from exc
