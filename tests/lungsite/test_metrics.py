"""GET /metrics (common.metrics, lungsite.views.metrics): who may read it, and that requests,
predictions, refusals by code and door, decode timeouts and the scrape-time gauges are there."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import shared_data_path

ROOT = Path(__file__).resolve().parents[2]
SCRAPER_TOKEN = "scraper-token-0123456789"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # throttle counts and the cached checkpoint age
    yield
    cache.clear()


def _scrape(client, **headers) -> dict[tuple[str, tuple], float]:
    response = client.get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(response.content.decode()):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def _value(samples: dict, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted((k, str(v)) for k, v in labels.items()))), 0.0)


def test_it_is_closed_to_anyone_but_the_scraper_and_superusers(client, api, clinician, superuser, settings):
    settings.LUNGSITE_METRICS_TOKEN = SCRAPER_TOKEN
    anonymous = client.get("/metrics")
    assert anonymous.status_code == 401 and anonymous["WWW-Authenticate"].startswith("Bearer")
    assert anonymous.json()["error"]["code"] == "not_authenticated"
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 401
    assert api(clinician).get("/metrics").status_code == 403  # an API token, but not a superuser's
    client.force_login(clinician)
    assert client.get("/metrics").status_code == 403
    assert api(superuser).get("/metrics").status_code == 200
    client.force_login(superuser)
    assert client.get("/metrics").status_code == 200
    client.logout()
    assert client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {SCRAPER_TOKEN}").status_code == 200

    settings.LUNGSITE_METRICS_TOKEN = ""  # no token set: no bearer token opens it
    assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer ").status_code == 401


def test_it_counts_requests_predictions_and_refusals_at_every_door(
    client, api, clinician, superuser, starter_model, django_capture_on_commit_callbacks
):
    admin = api(superuser)
    before = _scrape(admin)
    path = shared_data_path("nih_reproduce_chexnet", "images", "00000075_000.png")
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    with django_capture_on_commit_callbacks(execute=True):  # a row is counted once committed
        created = api(clinician).post("/api/v1/predictions/", {"image": upload}, format="multipart")
    assert created.status_code == 201
    junk = SimpleUploadedFile("x.png", b"not an image at all", content_type="image/png")
    refused = api(clinician).post("/api/v1/predictions/", {"image": junk}, format="multipart")
    assert refused.status_code == 415
    client.force_login(clinician)
    page = client.post("/", {"image": SimpleUploadedFile("y.png", b"nor this", content_type="image/png")})
    assert page.status_code == 415
    assert api(clinician).get("/api/v1/predictions/999999/").status_code == 404

    after = _scrape(admin)

    def grew(name: str, **labels) -> float:
        return _value(after, name, **labels) - _value(before, name, **labels)

    version = starter_model.version_name
    assert grew("lungsite_predictions_total", version=version, source="api") == 1
    assert grew("lungsite_refusals_total", door="api", code="not_an_image", status=415) == 1
    assert grew("lungsite_refusals_total", door="page", code="not_an_image", status=415) == 1
    assert grew("lungsite_refusals_total", door="api", code="not_found", status=404) == 1
    route = "api/v1/predictions/"
    assert grew("lungsite_http_requests_total", endpoint=route, method="POST", status=201) == 1
    assert grew("lungsite_http_requests_total", endpoint=route, method="POST", status=415) == 1
    assert (
        grew(
            "lungsite_http_requests_total", endpoint="api/v1/predictions/<int:pk>/", method="GET", status=404
        )
        == 1
    )
    assert grew("lungsite_http_request_duration_seconds_count", endpoint=route, method="POST") == 2


def test_a_decode_timeout_is_counted(api, clinician, superuser, starter_model, settings):
    settings.LUNGSITE_DECODE_TIMEOUT_S = 0  # no time at all: every decode runs out
    admin = api(superuser)
    before = _value(_scrape(admin), "lungsite_decode_timeouts_total", door="api")
    path = shared_data_path("nih_reproduce_chexnet", "images", "00000075_000.png")
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    response = api(clinician).post("/api/v1/predictions/", {"image": upload}, format="multipart")
    assert response.status_code == 422 and response.json()["error"]["code"] == "decode_timeout"
    assert _value(_scrape(admin), "lungsite_decode_timeouts_total", door="api") == before + 1


def test_it_reads_the_backlogs_and_the_checkpoint_age_at_scrape_time(api, superuser, settings):
    from audit.checkpoints import checkpoint_write

    admin = api(superuser)
    samples = _scrape(admin)
    assert _value(samples, "lungsite_queue_messages") >= 0 and ("lungsite_queue_messages", ()) in samples
    assert _value(samples, "lungsite_job_images_pending") == 0
    assert _value(samples, "lungsite_pacs_results_pending") == 0
    assert ("lungsite_audit_checkpoint_age_seconds", ()) not in samples  # no checkpoint yet

    checkpoint_write({"last_id": 1, "head": "a" * 64, "rows": None, "by": "test"})
    cache.clear()
    age = _value(_scrape(admin), "lungsite_audit_checkpoint_age_seconds")
    assert 0 <= age < 60


COUNTING = """
import sys
from common import metrics
for _ in range(int(sys.argv[1])):
    metrics.prediction_counted(version="v1", source="batch")
metrics.refusal_counted(door="job", code="decode_timeout", status=422)
"""

SCRAPING = """
import django, json
django.setup()
from prometheus_client.parser import text_string_to_metric_families
from common.metrics import exposition
text = exposition({"lungsite_test_gauge": ("a gauge", 7.0)}).decode()
print(json.dumps({s.name + json.dumps(s.labels, sort_keys=True): s.value
                  for f in text_string_to_metric_families(text) for s in f.samples}))
"""


def test_processes_sharing_the_multiprocess_folder_are_added_up(tmp_path):
    """As gunicorn's workers (and a Celery worker of the same host) do: each process writes its
    counts into PROMETHEUS_MULTIPROC_DIR, and a scrape in any of them adds them all up."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(("LUNGSITE_", "DATABASE_"))}
    env.update(
        PROMETHEUS_MULTIPROC_DIR=str(tmp_path),
        DJANGO_SETTINGS_MODULE="lungsite.settings",
        LUNGSITE_DATA_DIR=str(tmp_path),
    )
    for count in (2, 3):
        subprocess.run(
            [sys.executable, "-c", COUNTING, str(count)], cwd=ROOT, env=env, check=True, timeout=120
        )
    done = subprocess.run(
        [sys.executable, "-c", SCRAPING], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found['lungsite_predictions_total{"source": "batch", "version": "v1"}'] == 5
    assert found['lungsite_decode_timeouts_total{"door": "job"}'] == 2
    assert found["lungsite_test_gauge{}"] == 7
