"""Celery tasks of the audit log: the scheduled checkpoint of the chain's head (Celery beat runs it
every LUNGSITE_AUDIT_CHECKPOINT_SECONDS; `manage.py audit_checkpoint` does the same from cron)."""

from __future__ import annotations

from celery import shared_task


@shared_task
def chain_checkpoint() -> dict:
    """Signs the chain's head if it moved since the last checkpoint (audit.checkpoints)."""
    from audit.checkpoints import checkpoint_scheduled

    return checkpoint_scheduled()
