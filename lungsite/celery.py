"""The Celery app (Celery's Django layout): configured from Django's CELERY_* settings, tasks found
in each app's tasks.py (jobs, pacs, learning). Start a worker with `celery -A lungsite worker -n
NAME@%h` (docs/jobs.md): its pool is threads (CELERY_WORKER_POOL, from LUNGSITE_WORKER_POOL; the
setting wins over the command line's --pool).

The analysis decodes every image in a bounded child process (engine.decode_pool). Celery's prefork
pool runs tasks in daemonic processes, which may not start children, so a prefork worker would
fail every image: it refuses to start instead, saying which pool to use."""

import os
import sys

from celery import Celery, concurrency, signals
from celery.concurrency.prefork import TaskPool as PreforkPool

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lungsite.settings")

app = Celery("lungsite")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()

PREFORK_REFUSED = (
    "lungsite's workers cannot use Celery's prefork pool: each image is decoded in a bounded child "
    "process, which prefork's daemonic processes may not start. Set LUNGSITE_WORKER_POOL=threads "
    "(the default) or solo, and run more workers for more throughput."
)


@signals.worker_init.connect
def refuse_prefork(sender=None, **kwargs) -> None:
    pool = concurrency.get_implementation(getattr(sender, "pool_cls", None) or app.conf.worker_pool)
    if isinstance(pool, type) and issubclass(pool, PreforkPool):
        # SystemExit: Celery's signal dispatch logs and swallows ordinary exceptions.
        sys.exit(PREFORK_REFUSED)
