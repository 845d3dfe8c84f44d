"""Celery tasks of the registry: small, take ids, call the training service."""

from celery import shared_task


@shared_task(acks_late=True)
def training_run_task(run_id: int) -> str:
    """Trains as TrainingRun `run_id` says (started from the admin's "Train from this version")."""
    from learning.training import training_run_execute

    return training_run_execute(run_id=run_id).status
