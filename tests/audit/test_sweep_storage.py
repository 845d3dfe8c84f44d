"""`manage.py sweep_storage`: stored images that no row names are removed once old enough; images
with a row, recent files and everything outside images/ stay (audit.sweep)."""

from __future__ import annotations

import json
import os
import time
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.utils import timezone

from audit.integrity import prediction_create_chained
from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


@pytest.fixture
def version(db):
    return ModelVersion.objects.create(
        version_name="sweep", storage_path="weights/s.pt", sha256="e" * 64, class_names=DEFAULT_CLASS_NAMES
    )


def _stored(name: str, *, hours_old: float) -> str:
    storage = storages["xray_images"]
    saved = storage.save(name, ContentFile(b"png bytes of " + name.encode()))
    then = time.time() - hours_old * 3600
    os.utime(storage.path(saved), (then, then))
    return saved


def _with_row(version, name: str) -> str:
    prediction_create_chained(
        stored_data=b"x", model=version, image_url=name, results_json={"findings": []}, image_sha256="0" * 64
    )
    return name


def _sweep(*args) -> dict:
    out = StringIO()
    call_command("sweep_storage", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_removes_old_images_without_a_row_and_keeps_the_rest(version):
    month = f"images/{timezone.now():%Y/%m}"
    kept = _with_row(version, _stored(f"{month}/kept.png", hours_old=3))
    orphan = _stored(f"{month}/orphan.png", hours_old=3)
    in_flight = _stored(f"{month}/in-flight.png", hours_old=0.25)  # its row may commit any moment
    elsewhere = _stored("images/test/orphan-elsewhere.png", hours_old=3)
    other_kept = _with_row(version, _stored("images/test/kept-elsewhere.png", hours_old=3))
    staged = _stored("jobs/1/0.bin", hours_old=30)  # not an analysed image: not the sweep's
    storage = storages["xray_images"]

    dry = _sweep("--older-than", "1h", "--dry-run")
    assert sorted(dry["removed"]) == sorted([orphan, elsewhere]) and dry["dry_run"] is True
    assert storage.exists(orphan)

    report = _sweep("--older-than", "1h")
    assert sorted(report["removed"]) == sorted([orphan, elsewhere])
    assert report["checked"] == 5 and report["recent"] == 1 and report["orphaned"] == 2
    for name in (kept, in_flight, other_kept, staged):
        assert storage.exists(name), name
    assert not storage.exists(orphan) and not storage.exists(elsewhere)
    assert Prediction.objects.count() == 2

    # Once the in-flight file is old and still has no row, it goes too.
    assert _sweep("--older-than", "10m")["removed"] == [in_flight]


def test_it_refuses_a_cut_off_that_could_catch_requests_in_flight(db):
    with pytest.raises(CommandError, match="at least"):
        _sweep("--older-than", "30s")
    with pytest.raises(CommandError, match="not a duration"):
        _sweep("--older-than", "soon")


def test_an_empty_store_is_swept_without_error(db):
    assert _sweep() == {"checked": 0, "recent": 0, "orphaned": 0, "removed": [], "dry_run": False}
