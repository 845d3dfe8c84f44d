"""The Celery app (Celery's Django layout): configured from Django's CELERY_* settings, tasks found
in each app's tasks.py (jobs, pacs, registry). Start a worker with
`celery -A lungsite worker --pool=solo -n NAME@%h` (docs/jobs.md)."""

import os

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lungsite.settings")

app = Celery("lungsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()
