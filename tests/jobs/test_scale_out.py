"""Two real Celery workers on the local Redis share one job; one is killed (SIGKILL) mid-job. Every
image must end logged exactly once or failed with a reason (acks_late + the visibility timeout put
the killed worker's task back in the queue; the per-image link makes the redelivered task log only
what was not logged yet).

Needs Postgres (DATABASE_URL: the workers open the test database pytest-django created) and Redis
on 127.0.0.1:6379 (database 2, LUNGSITE_TEST_BROKER_URL to change it). The workers are started and
stopped here."""

import os
import re
import signal
import subprocess
import sys
import time
import uuid

import pytest
from django.db import connection

from audit.models import Prediction
from jobs.models import JobImage, PredictionJob

BROKER_URL = os.environ.get("LUNGSITE_TEST_BROKER_URL", "redis://127.0.0.1:6379/2")
VISIBILITY_TIMEOUT_S = 6
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def redis_broker():
    import redis

    try:
        redis.Redis.from_url(BROKER_URL, socket_connect_timeout=1).ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {BROKER_URL} ({exc})")
    return BROKER_URL


@pytest.fixture
def postgres_url():
    if connection.vendor != "postgresql":
        pytest.skip("the workers must open the test database: run with DATABASE_URL=postgres://...")
    import dj_database_url

    parts = dj_database_url.parse(os.environ["DATABASE_URL"])
    name = connection.settings_dict["NAME"]  # the test database pytest-django created
    return (
        f"postgres://{parts['USER']}:{parts['PASSWORD'] or ''}@{parts['HOST']}:{parts['PORT'] or 5432}/{name}"
    )


@pytest.fixture
def workers(redis_broker, postgres_url, tmp_path):
    """start(name) -> a Celery worker process on a queue of this test; all stopped at the end."""
    from lungsite.celery import app

    queue = f"lungsite-test-{uuid.uuid4().hex[:8]}"
    saved = {k: app.conf[k] for k in ("broker_url", "broker_transport_options", "task_default_queue")}
    app.conf.update(
        broker_url=redis_broker,
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        task_default_queue=queue,
        task_always_eager=False,
    )
    app.close()  # drop connections made for another broker
    app.amqp._producer_pool = None  # and the producers an earlier test kept for it
    env = dict(
        os.environ,
        DATABASE_URL=postgres_url,
        LUNGSITE_BROKER_URL=redis_broker,
        LUNGSITE_BROKER_VISIBILITY_TIMEOUT=str(VISIBILITY_TIMEOUT_S),
        LUNGSITE_JOBS_QUEUE=queue,
        LUNGSITE_DATA_DIR=str(tmp_path),  # storage/<bucket> there is this test's storage (conftest)
        LUNGSITE_BATCH_SIZE="2",
        LUNGSITE_JOB_BATCHES_PER_TASK="1",
        LUNGSITE_TORCH_THREADS="1",
        PYTHONUNBUFFERED="1",  # the log of a killed worker is read afterwards
        DJANGO_HTTPS="0",
    )
    started: dict[str, tuple[subprocess.Popen, object]] = {}

    def start(name: str) -> subprocess.Popen:
        log = open(tmp_path / f"{name}.log", "w+")  # noqa: SIM115 - open while the worker runs
        process = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "lungsite", "worker", "-n", f"{name}@%h",
             "-c", "1", "--prefetch-multiplier", "1",
             "-Q", queue, "-l", "info", "--without-gossip", "--without-mingle", "--without-heartbeat"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
        started[name] = (process, log)
        return process

    def log_of(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text()

    start.log_of = log_of
    yield start
    for process, log in started.values():
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        log.close()
    app.conf.update(saved)
    app.close()
    app.amqp._producer_pool = None


def _wait(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.3)


def test_it_logs_every_image_exactly_once_when_a_worker_is_killed(
    workers, clinician, starter_model, nih_pngs, settings
):
    from jobs.services import job_create

    # The submitting process splits the job into tasks: 2 images each, as the workers' batches.
    settings.LUNGSITE_BATCH_SIZE = 2
    settings.LUNGSITE_JOB_BATCHES_PER_TASK = 1

    first, second = workers("w1"), workers("w2")
    for name in ("w1", "w2"):
        _wait(lambda name=name: " ready." in workers.log_of(name), 120, f"worker {name} to start")

    files = nih_pngs(16)
    job = job_create(user=clinician, source="api", files=files)  # 8 tasks of 2 images
    try:
        _wait(lambda: JobImage.objects.filter(job=job, state="done").count() >= 4, 300, "the first images")
    except AssertionError as exc:  # say what the workers said
        logs = workers.log_of("w1")[-2000:] + "\n" + workers.log_of("w2")[-2000:]
        raise AssertionError(f"{exc}\n{logs}") from None
    assert first.poll() is None
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    killed_at = PredictionJob.objects.get(pk=job.pk)
    assert killed_at.state == "running"

    _wait(lambda: PredictionJob.objects.get(pk=job.pk).state == "done", 300, "the job to finish")
    job.refresh_from_db()
    images = list(JobImage.objects.filter(job=job))
    assert len(images) == 16
    for image in images:
        assert image.state in ("done", "failed"), (image.name, image.state)
        if image.state == "failed":
            assert image.reason
    done = [image for image in images if image.state == "done"]
    assert job.done == len(done) and job.done + job.failed == 16
    # Exactly once: one row per logged image, none without its image, no image logged twice.
    rows = Prediction.objects.filter(source="batch")
    assert rows.count() == len(done)
    assert sorted(rows.values_list("pk", flat=True)) == sorted(image.prediction_id for image in done)
    assert rows.values("image_sha256").distinct().count() == len({image.sha256 for image in done})
    # Both workers took part, and the task the killed one held was run again by the other.
    log1, log2 = workers.log_of("w1"), workers.log_of("w2")
    received_by_first = set(re.findall(r"_task\[([0-9a-f-]+)\] received", log1))
    finished_by_first = set(re.findall(r"_task\[([0-9a-f-]+)\] succeeded", log1))
    assert received_by_first, "the first worker took no task"
    unfinished = received_by_first - finished_by_first
    assert unfinished, "the killed worker held no task (killed between tasks)"
    assert all(f"[{task_id}] succeeded" in log2 for task_id in unfinished), log2[-3000:]
    assert second.poll() is None
