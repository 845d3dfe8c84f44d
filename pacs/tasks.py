"""Celery tasks of the PACS flow: small, take ids (and the analysis copy's bytes, which hold no
patient data), call pacs.services. acks_late: a worker killed mid-task leaves the message for
another; the services are idempotent."""

from __future__ import annotations

from celery import shared_task
from django.utils import timezone


@shared_task(acks_late=True)
def instance_analyse_task(received_id: int, dataset_bytes: bytes) -> str:
    """Analyses one received instance and sends its results; returns the row's state."""
    from pacs import services
    from pacs.models import ReceivedInstance

    try:
        return services.instance_analyse(received_id=received_id, dataset_bytes=dataset_bytes).state
    except Exception as exc:
        # A bug or an outage the service did not expect: the row says so instead of staying queued.
        ReceivedInstance.objects.filter(pk=received_id, state=ReceivedInstance.QUEUED).update(
            state=ReceivedInstance.FAILED,
            reason=f"analysis error ({type(exc).__name__})",
            finished_at=timezone.now(),
        )
        raise


@shared_task(acks_late=True)
def results_deliver_due() -> int:
    """Sends the result objects whose next try is due (the beat schedule runs it every 30 s);
    returns how many were sent."""
    from pacs import services
    from pacs.models import ResultObject

    return sum(result.state == ResultObject.SENT for result in services.results_deliver_due())
