"""The PACS flow on real processes: `manage.py dicom_listener` and a Celery worker sharing the test's
Postgres database and a Redis broker (DB 3). The listener answers C-STORE after queueing; the worker
analyses. Skips on SQLite (the processes need a shared server database) or without Redis."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time

import pydicom
import pytest
from django.db import connection
from pynetdicom import AE
from pynetdicom.sop_class import ComputedRadiographyImageStorage

from tests.conftest import ROOT, shared_data_path
from tests.reliability.liveserver import database_url, free_port, postgres_params

BROKER = os.environ.get("LUNGSITE_TEST_BROKER_URL", "redis://127.0.0.1:6379/3")
pytestmark = pytest.mark.django_db(transaction=True)


def _redis():
    import redis

    client = redis.Redis.from_url(BROKER, socket_connect_timeout=2)
    try:
        client.ping()
    except redis.RedisError as exc:
        pytest.skip(f"no Redis at {BROKER} ({exc})")
    return client


@contextlib.contextmanager
def _process(args: list[str], env: dict, log):
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=30)


def test_it_analyses_a_c_store_on_a_celery_worker_through_redis(starter_model, tmp_path):
    from pacs.models import ReceivedInstance

    if connection.vendor != "postgresql":
        pytest.skip("the listener and the worker share the test database: needs Postgres (DATABASE_URL)")
    _redis().flushdb()
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "LUNGSITE_"))}
    env.update(
        DATABASE_URL=database_url(postgres_params(), connection.settings_dict["NAME"]),
        # The same folder as the test's storage (tests/conftest.py): the worker loads the weights from it.
        LUNGSITE_DATA_DIR=str(tmp_path),
        LUNGSITE_BROKER_URL=BROKER,
        LUNGSITE_DICOM_PORT=str(port),
        LUNGSITE_DICOM_HOST="127.0.0.1",
        LUNGSITE_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        DJANGO_HTTPS="0",
        DJANGO_SECRET_KEY="test-only-secret-key-for-the-pacs-worker-test-0123456789",
    )
    log = open(tmp_path / "processes.log", "wb")  # noqa: SIM115 - closed below
    python = sys.executable
    worker = [
        python,
        "-m",
        "celery",
        "-A",
        "lungsite",
        "worker",
        "-P",
        "solo",
        "-c",
        "1",
        "--loglevel",
        "INFO",
    ]
    with (
        _process([python, "manage.py", "dicom_listener"], env, log),
        _process(worker, env, log),
    ):
        scu = AE(ae_title="TESTSCU")
        scu.add_requested_context(ComputedRadiographyImageStorage)
        deadline = time.monotonic() + 120
        assoc = None
        while time.monotonic() < deadline:
            assoc = scu.associate("127.0.0.1", port, ae_title="LUNGSITE")
            if assoc.is_established:
                break
            time.sleep(1)
        assert assoc is not None and assoc.is_established, (tmp_path / "processes.log").read_text()[-3000:]
        ds = pydicom.dcmread(shared_data_path("pydicom_data", "RG1_UNCR.dcm"))
        assert assoc.send_c_store(ds).Status == 0x0000
        assoc.release()

        received = ReceivedInstance.objects.get()
        deadline = time.monotonic() + 240
        while received.state == ReceivedInstance.QUEUED and time.monotonic() < deadline:
            time.sleep(1)
            received.refresh_from_db()
    log.close()
    output = (tmp_path / "processes.log").read_text(errors="replace")
    assert received.state == ReceivedInstance.DONE, output[-3000:]
    assert received.prediction.source == "pacs" and received.prediction.model_id == starter_model.pk
    assert "pacs.tasks.instance_analyse_task" in output and "succeeded" in output
    assert received.results.count() >= 1
