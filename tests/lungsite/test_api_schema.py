"""The OpenAPI 3 schema: it validates, it needs credentials, the docs page works offline, and a
schemathesis run over every operation finds no 5xx and no response that breaks the schema; a bounded
`st run` with every check, as a clinician and as a model admin, against gunicorn finds nothing."""

import contextlib
import subprocess
import sys
from pathlib import Path

import pytest
import schemathesis
from django.contrib.staticfiles import finders
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from analysis.services import analyse
from tests.conftest import shared_data_path

SCHEMA_URL = "/api/v1/schema/"
OPERATIONS = {
    ("/api/v1/predictions/", "post"),
    ("/api/v1/predictions/", "get"),
    ("/api/v1/predictions/{id}/", "get"),
    ("/api/v1/predictions/{id}/heatmaps/{name}.png", "get"),
    ("/api/v1/predictions/{id}/image", "get"),
    ("/api/v1/predictions/{id}/fhir", "get"),
    ("/api/v1/models/", "get"),
    ("/api/v1/models/{id}/", "get"),
    ("/api/v1/models/{id}/activate/", "post"),
    ("/api/v1/", "get"),
    ("/api/v1/predictions/{id}/labels/", "get"),
    ("/api/v1/predictions/{id}/labels/", "post"),
    ("/api/v1/jobs/", "get"),
    ("/api/v1/jobs/", "post"),
    ("/api/v1/jobs/{id}/", "get"),
    ("/api/v1/jobs/{id}/results.csv", "get"),
    ("/api/v1/jobs/{id}/cancel/", "post"),
    ("/api/v1/drift/", "get"),
    ("/api/v1/models/shadow/", "get"),
    ("/api/v1/evaluations/{id}/", "get"),
}


def token_client(user) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=user).key}")
    return client


def test_it_validates_without_warnings(db, tmp_path):
    call_command("spectacular", "--validate", "--fail-on-warn", "--file", str(tmp_path / "schema.yml"))

    assert (tmp_path / "schema.yml").read_text().startswith("openapi: 3.0.3")


def test_it_serves_the_schema_to_an_authenticated_caller(clinician):
    response = token_client(clinician).get(SCHEMA_URL, {"format": "json"})

    assert response.status_code == 200
    schema = response.json()
    assert schema["openapi"].startswith("3.")
    operations = {(path, method) for path, item in schema["paths"].items() for method in item}
    assert operations == OPERATIONS
    create = schema["paths"]["/api/v1/predictions/"]["post"]
    assert "multipart/form-data" in create["requestBody"]["content"]
    assert {"201", "400", "401", "403", "413", "415", "429", "503"} <= set(create["responses"])
    assert create["responses"]["201"]["content"]["application/json"]["examples"]


def test_it_describes_every_parameter_and_body(clinician):
    schema = token_client(clinician).get(SCHEMA_URL, {"format": "json"}).json()
    paths = schema["paths"]
    activate = paths["/api/v1/models/{id}/activate/"]["post"]["requestBody"]["content"]["application/json"]
    reason = schema["components"]["schemas"][activate["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert "override_reason" in reason["properties"]
    create = paths["/api/v1/predictions/"]["post"]
    assert [p["name"] for p in create["parameters"]] == ["Idempotency-Key"]
    upload = create["requestBody"]["content"]["multipart/form-data"]
    assert (
        upload["schema"]["required"] == ["image"]
        and upload["schema"]["properties"]["image"]["minLength"] == 1
    )
    assert {"200", "201", "422"} <= set(create["responses"])
    listing = {p["name"]: p["schema"] for p in paths["/api/v1/predictions/"]["get"]["parameters"]}
    assert {"format": "date-time"} in listing["created_after"]["anyOf"]  # and a date, and empty
    labels = paths["/api/v1/predictions/{id}/labels/"]["post"]["requestBody"]["content"]
    assert list(labels) == ["application/json"]


def test_it_keeps_the_schema_from_anonymous_callers(db):
    response = APIClient().get(SCHEMA_URL)

    assert response.status_code == 401
    assert response.json()["error"]["code"] == "not_authenticated"


def test_it_serves_the_docs_page_without_a_cdn(client, clinician):
    client.force_login(clinician)

    response = client.get("/api/v1/docs/")

    assert response.status_code == 200
    html = response.content.decode()
    assert "swagger-ui-dist/swagger-ui-bundle.js" in html
    for cdn in ("cdn.jsdelivr", "unpkg.com", "cdnjs"):
        assert cdn not in html
    assert finders.find("drf_spectacular_sidecar/swagger-ui-dist/swagger-ui-bundle.js")


def test_it_sends_an_anonymous_browser_from_the_docs_to_the_login_page(client, db):
    response = client.get("/api/v1/docs/")

    assert response.status_code == 302
    assert response["Location"] == "/login/?next=/api/v1/docs/"


# --- schemathesis --------------------------------------------------------------------------------


@pytest.fixture
def api_data(superuser, starter_model):
    """A superuser token (every operation is open to it), one real prediction, the starter's id."""
    cache.clear()  # throttle counts
    path = shared_data_path("nih_reproduce_chexnet", "images", "00000075_000.png")
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    prediction = analyse(upload=upload, user=superuser, source="api")
    yield Token.objects.create(user=superuser).key, prediction.pk, starter_model.pk
    cache.clear()


@pytest.fixture
def wsgi_app():
    """The project's WSGI app, built after the suite's settings (no HTTPS redirect) are in place.
    Like Django's test client, it must not close the database connection at the end of each request:
    that connection holds the test's transaction."""
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield WSGIHandler()
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_it_conforms_to_its_schema(api_data, wsgi_app):
    """Every operation, with valid and with invalid generated data: no 5xx, and every response
    (status, content type, headers, body) as the schema documents it. Bounded: ~10 cases per
    operation and mode. (schemathesis' pytest plugin does not run under pytest 9, so this drives
    hypothesis directly.)"""
    token, prediction_id, model_id = api_data
    headers = {"Authorization": f"Token {token}"}
    schema = schemathesis.openapi.from_wsgi(f"{SCHEMA_URL}?format=json", wsgi_app, headers=headers)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {(op.path, op.method.lower()) for op in operations} == OPERATIONS

    failures = []
    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(
                max_examples=10,
                deadline=None,
                derandomize=True,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            def run(case):
                case.call_and_validate(headers=headers, checks=CHECKS)

            try:
                run()
            except Unsatisfiable:
                # An operation with no parameters and no body (the API index, the job list) has no
                # invalid input to generate: the positive cases covered it.
                assert mode == GenerationMode.NEGATIVE, operation.path
            except Exception as exc:  # noqa: BLE001 - collect every operation's failure, then fail once
                failures.append(f"{operation.method.upper()} {operation.path} ({mode.value}): {exc}")
    assert not failures, "\n\n".join(failures)

    # Random ids are almost all 404s: the success responses of the real rows are checked here.
    known = {
        ("/api/v1/predictions/{id}/", "GET"): {"id": prediction_id},
        ("/api/v1/predictions/{id}/heatmaps/{name}.png", "GET"): {"id": prediction_id, "name": "Edema"},
        ("/api/v1/predictions/{id}/image", "GET"): {"id": prediction_id},
        ("/api/v1/predictions/{id}/fhir", "GET"): {"id": prediction_id},
        ("/api/v1/models/{id}/", "GET"): {"id": model_id},
        ("/api/v1/models/{id}/activate/", "POST"): {"id": model_id},
    }
    for (path, method), parameters in known.items():
        response = (
            schema[path][method]
            .Case(path_parameters=parameters)
            .call_and_validate(headers=headers, checks=CHECKS)
        )
        assert response.status_code == 200, (path, response.status_code)


# --- st run against a real server, both roles -------------------------------------------------------

ROOT = Path(__file__).resolve().parents[2]
ST_SEED = "20261206"
ST_EXAMPLES = "10"


@contextlib.contextmanager
def _site_database():
    """A scratch Postgres database on the test server, or (on SQLite) the site's own SQLite file."""
    from django.db import connection

    from tests.reliability import liveserver

    if connection.vendor == "postgresql":
        with liveserver.scratch_database() as (params, name):
            yield liveserver.database_url(params, name)
    else:
        yield ""


@pytest.mark.django_db(transaction=True)
def test_a_bounded_schemathesis_run_finds_no_failure_for_either_role(tmp_path):
    """What a checker runs: `st run` with every check (schemathesis.toml in the repository says
    which refusals of generated bytes are right), all phases, a fixed seed and a bound on examples,
    once with a clinician's token and once with a model admin's."""
    from tests.reliability import liveserver

    with _site_database() as url:
        env = liveserver.site_env(url, tmp_path / "data", LUNGSITE_PREDICTION_RATE="100000/minute")
        site = liveserver.prepared_site(env)
        with liveserver.Gunicorn(env, workers=1, threads=2, log=tmp_path / "gunicorn.log") as server:
            server.wait_ready()
            failures = []
            for role in ("alice", "dave"):
                done = subprocess.run(
                    [
                        str(Path(sys.executable).with_name("st")),
                        "run",
                        f"{server.url}/api/v1/schema/?format=json",
                        "--header",
                        f"Authorization: Token {site[f'{role}_token']}",
                        "--checks",
                        "all",
                        "--max-examples",
                        ST_EXAMPLES,
                        "--seed",
                        ST_SEED,
                        "--workers",
                        "1",
                        "--no-color",
                    ],
                    cwd=ROOT,  # schemathesis.toml
                    capture_output=True,
                    text=True,
                    timeout=600,
                )
                if done.returncode != 0:
                    failures.append(
                        f"--- as {role} (exit {done.returncode}):\n{done.stdout[-6000:]}{done.stderr[-2000:]}"
                    )
            assert not failures, "\n".join(failures) + "\n" + server.log_tail()
