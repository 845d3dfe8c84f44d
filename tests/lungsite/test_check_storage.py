import io
import json

import httpx
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from tests.lungsite.fake_supabase import FakeSupabaseStorage, use_fake

STEPS_LOCAL = ["save", "exists", "read", "size", "delete", "gone"]
STEPS_SUPABASE = ["bucket", "save", "exists", "read", "size", "url", "delete", "gone"]


def run(*args) -> tuple[dict, CommandError | None]:
    out = io.StringIO()
    try:
        call_command("check_storage", *args, stdout=out)
        error = None
    except CommandError as exc:
        error = exc
    return json.loads(out.getvalue()), error


@pytest.fixture
def fake(settings, monkeypatch) -> FakeSupabaseStorage:
    return use_fake(settings, monkeypatch, FakeSupabaseStorage())


def test_it_round_trips_on_local_files(tmp_path):
    report, error = run()

    assert error is None and report["ok"] is True
    for alias in ("models", "xray_images"):
        entry = report["storages"][alias]
        assert entry["backend"] == "filesystem"
        assert entry["ok"] is True
        assert list(entry["steps"]) == STEPS_LOCAL
    # The probe objects are gone.
    assert not list((tmp_path / "storage").rglob("*.txt"))


def test_it_creates_missing_buckets_private_and_round_trips(fake):
    report, error = run()

    assert error is None and report["ok"] is True
    for alias, bucket in (("models", "models"), ("xray_images", "xray-images")):
        entry = report["storages"][alias]
        assert entry["backend"] == "supabase" and entry["bucket"] == bucket
        assert list(entry["steps"]) == STEPS_SUPABASE
        assert entry["steps"]["bucket"]["created"] is True
        assert fake.buckets[bucket]["public"] is False
    assert fake.objects == {}


def test_it_keeps_existing_buckets(fake):
    fake.add_bucket("models")
    fake.add_bucket("xray-images")

    report, error = run()

    assert error is None
    assert report["storages"]["models"]["steps"]["bucket"]["created"] is False


def test_it_fails_on_a_public_bucket(fake):
    fake.add_bucket("models")
    fake.add_bucket("xray-images", public=True)

    report, error = run()

    assert error is not None and "xray_images" in str(error)
    assert report["storages"]["models"]["ok"] is True
    assert "public" in report["storages"]["xray_images"]["steps"]["bucket"]["error"]


def test_it_reports_missing_buckets_without_creating_them(fake):
    report, error = run("--no-create")

    assert error is not None
    message = report["storages"]["models"]["steps"]["bucket"]["error"]
    assert "does not exist" in message
    assert "without --no-create" in message and "manage.py check_storage" not in message
    assert fake.buckets == {}


def test_it_reports_a_wrong_storage_url_as_a_wrong_url(fake, settings):
    # A standalone Storage server serves its routes at its root: SUPABASE_URL + /storage/v1 is wrong.
    settings.SUPABASE_STORAGE_URL = "https://fake-project.supabase.co/not-storage"

    report, error = run()

    assert error is not None
    message = report["storages"]["models"]["steps"]["bucket"]["error"]
    assert "route not found" in message and "SUPABASE_STORAGE_URL" in message
    assert "does not exist" not in message and "check_storage" not in message
    assert fake.buckets == {}


def test_it_reports_the_anon_key_as_the_wrong_key(fake, settings):
    import base64
    import json as jsonlib

    payload = base64.urlsafe_b64encode(jsonlib.dumps({"role": "anon"}).encode()).decode().rstrip("=")
    settings.SUPABASE_KEY = f"eyJhbGciOiJIUzI1NiJ9.{payload}.signature"

    report, error = run()

    assert error is not None
    message = report["storages"]["models"]["steps"]["bucket"]["error"]
    assert "anon" in message and "service_role" in message
    assert fake.requests == []  # refused before anything was sent


def test_it_fails_with_a_clear_report_when_storage_is_unreachable(fake):
    fake.raise_exc = httpx.ConnectError("connection refused")

    report, error = run()

    assert error is not None and report["ok"] is False
    step = report["storages"]["models"]["steps"]["bucket"]
    assert step["ok"] is False and step["error"].startswith("StorageUnavailable:")


def test_it_cleans_up_when_a_later_step_fails(fake, monkeypatch):
    from common.supabase_storage import StorageUnavailable, SupabaseStorage

    def broken_url(self, name):
        raise StorageUnavailable("Supabase Storage refused to sign")

    monkeypatch.setattr(SupabaseStorage, "url", broken_url)

    report, error = run()

    assert error is not None
    assert report["storages"]["models"]["steps"]["url"]["ok"] is False
    assert fake.objects == {}
