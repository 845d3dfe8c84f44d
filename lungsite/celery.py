"""The Celery app of the batch jobs (jobs/tasks.py), configured from the CELERY_* settings.

Run a worker with `celery -A lungsite worker --pool=solo -n NAME@%h` (docs/jobs.md)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lungsite.settings")

app = Celery("lungsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
