"""Every job ends in a reason: a ZIP bomb costs nothing, an unexpected error fails the images it
stopped with its reason, and a worker refuses Celery's prefork pool instead of failing every image."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tracemalloc
import zipfile

import pytest

from jobs import services
from jobs.models import JobImage, PredictionJob
from lungsite.celery import PREFORK_REFUSED

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _zeros_zip(members: int, megabytes: int) -> bytes:
    """`members` PNG-headed members of `megabytes` MB of zeros each: about 50 KB per member."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for i in range(members):
            archive.writestr(f"image-{i}.png", b"\x89PNG\r\n\x1a\n" + bytes(megabytes * 1024 * 1024))
    return buffer.getvalue()


def test_it_refuses_a_zip_bomb_from_its_directory_without_inflating_it(clinician, settings):
    bomb = _zeros_zip(21, 49)
    assert len(bomb) < 2 * 1024 * 1024  # the upload is small; inflated it would be 1.05 GB
    tracemalloc.start()
    try:
        job = services.job_create(user=clinician, source="api", files=[("bomb.zip", io.BytesIO(bomb))])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 20 * 1024 * 1024
    images = list(JobImage.objects.filter(job=job))
    assert len(images) == 21
    assert {image.code for image in images} == {"zip_bomb"}
    assert all(image.staged_name == "" for image in images)
    assert job.state == PredictionJob.STATE_DONE
    root = settings.STORAGES["xray_images"]["OPTIONS"]["location"]
    assert not [p for p in root.rglob("*") if p.is_file()]


def test_it_stops_inflating_a_member_whose_directory_lies(clinician, settings):
    # A plain (stored) member of 3 MB under a 2 MB limit, read past the limit: refused, not staged.
    settings.LUNGSITE_MAX_UPLOAD_MB = 2
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        archive.writestr("big.png", b"\x89PNG\r\n\x1a\n" + os.urandom(3 * 1024 * 1024))
    job = services.job_create(user=clinician, source="api", files=[("a.zip", io.BytesIO(buffer.getvalue()))])
    image = JobImage.objects.get(job=job)
    assert (image.state, image.code) == (JobImage.STATE_REFUSED, "too_large")


def test_it_bounds_what_one_user_has_waiting(clinician, settings, nih_pngs):
    settings.LUNGSITE_MAX_USER_INFLIGHT_MB = 1  # a few NIH PNGs are ~0.5 MB each
    first = services.job_create(user=clinician, source="api", files=nih_pngs(1))
    assert JobImage.objects.get(job=first).state == JobImage.STATE_PENDING  # no worker: it waits
    second = services.job_create(user=clinician, source="api", files=nih_pngs(3))
    codes = list(JobImage.objects.filter(job=second).order_by("position").values_list("code", flat=True))
    assert "job_limit" in codes


def test_an_unexpected_error_fails_the_images_with_its_reason_and_ends_the_job(
    clinician, starter_model, nih_pngs, eager_jobs, monkeypatch
):
    def broken(**kwargs):
        raise RuntimeError("the runtime crashed")

    monkeypatch.setattr(services, "analyse_batch", broken)
    with eager_jobs():
        job = services.job_create(user=clinician, source="api", files=nih_pngs(2))
    job.refresh_from_db()
    assert job.state == PredictionJob.STATE_DONE and job.failed == 2
    reasons = set(JobImage.objects.filter(job=job).values_list("reason", flat=True))
    assert reasons == {"Not analysed: RuntimeError: the runtime crashed"}


def test_a_prefork_worker_refuses_to_start_and_says_which_pool_to_use(tmp_path):
    env = dict(os.environ, LUNGSITE_DATA_DIR=str(tmp_path), DJANGO_HTTPS="0", LUNGSITE_WORKER_POOL="prefork")
    run = subprocess.run(
        [sys.executable, "-m", "celery", "-A", "lungsite", "worker", "-c", "1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode != 0
    assert PREFORK_REFUSED in run.stdout + run.stderr


@pytest.mark.parametrize("pool", ["threads", "solo"])
def test_the_pools_that_can_decode_are_accepted(pool):
    from celery import concurrency

    from lungsite.celery import refuse_prefork

    worker = type("Worker", (), {"pool_cls": pool})()
    refuse_prefork(sender=worker)  # returns: no SystemExit
    assert concurrency.get_implementation(pool)
