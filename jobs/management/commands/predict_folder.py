import json
import sys
import time
from pathlib import Path

from celery import current_app as app
from django.core.management.base import BaseCommand, CommandError

from common.csv_export import CsvWriter
from common.errors import LungsiteError
from jobs import selectors, services
from jobs.models import PredictionJob


class Command(BaseCommand):
    help = "Submit every file under DIR as one batch job and print it as JSON (with --wait, once finished)."

    def add_arguments(self, parser):
        parser.add_argument("directory")
        parser.add_argument("--out", help="Write the results CSV here (implies --wait).")
        parser.add_argument(
            "--wait", action="store_true", help="Wait until the workers have finished the job."
        )
        parser.add_argument(
            "--here",
            action="store_true",
            help="Analyse the images in this process instead of on the workers.",
        )
        parser.add_argument("--timeout", type=float, default=3600.0, help="Seconds --wait waits at most.")

    def handle(self, *args, directory, out, wait, here, timeout, **options):
        root = Path(directory)
        if not root.is_dir():
            raise CommandError(f"{directory} is not a directory.")
        paths = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
        if not paths:
            raise CommandError(f"{directory} holds no files.")
        files = [(str(p.relative_to(root)), p.read_bytes()) for p in paths]
        eager = app.conf.task_always_eager
        app.conf.task_always_eager = eager or here
        try:
            job = services.job_create(user=None, source="command", files=files)
        except LungsiteError as exc:
            raise CommandError(str(exc)) from exc
        finally:
            app.conf.task_always_eager = eager
        if wait or out:
            deadline = time.monotonic() + timeout
            while job.state in (PredictionJob.STATE_QUEUED, PredictionJob.STATE_RUNNING):
                if time.monotonic() > deadline:
                    raise CommandError(f"Job {job.pk} has not finished after {timeout:.0f} s.")
                time.sleep(0.5)
                job.refresh_from_db()
        if out:
            with open(out, "w", newline="") as handle:
                CsvWriter(handle).writerows(selectors.job_results_rows(job=job))
        job.refresh_from_db()
        json.dump(selectors.job_progress(job=job), sys.stdout, default=str)
        sys.stdout.write("\n")
