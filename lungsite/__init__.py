# The Celery app loads with Django, so @shared_task functions bind to it (Celery's Django layout).
from lungsite.celery import app as celery_app

__all__ = ("celery_app",)
