"""GET /healthz: no authentication, 200 with the active version, 503 without a database."""

from django.db import OperationalError

from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


def active_row() -> ModelVersion:
    return ModelVersion.objects.create(
        version_name="starter-untrained-densenet121",
        storage_path="weights/x.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="c" * 64,
        untrained=True,
        is_active=True,
    )


def test_it_reports_the_active_version_without_authentication(client, db):
    version = active_row()

    response = client.get("/healthz")

    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "checks": {"database": "ok", "storage": "ok", "model": "ok"},
        "model": {
            "id": version.pk,
            "version_name": "starter-untrained-densenet121",
            "sha256": "c" * 64,
            "untrained": True,
            "precision": "fp32",
        },
    }
    assert "no-cache" in response["Cache-Control"]


def test_it_says_when_no_version_is_active(client, db):
    assert client.get("/healthz").json() == {
        "status": "ok",
        "checks": {"database": "ok", "storage": "ok", "model": "none_active"},
        "model": None,
    }


def test_it_answers_503_when_the_database_is_unreachable(client, db, monkeypatch):
    def unreachable():
        raise OperationalError("connection refused")

    monkeypatch.setattr("registry.selectors.model_version_get_active", unreachable)

    response = client.get("/healthz")

    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
    assert response.json()["checks"] == {"database": "unavailable", "storage": "ok", "model": "unavailable"}


def test_it_says_when_the_image_storage_is_down(client, db, settings, monkeypatch):
    import httpx

    from tests.lungsite.fake_supabase import FakeSupabaseStorage, use_fake

    active_row()
    fake = use_fake(settings, monkeypatch, FakeSupabaseStorage())
    fake.raise_exc = httpx.ConnectError("connection refused")

    response = client.get("/healthz")

    assert response.status_code == 503
    body = response.json()
    assert body["checks"] == {"database": "ok", "storage": "unavailable", "model": "ok"}
    assert body["error"]["code"] == "storage_unavailable"
    assert body["model"]["version_name"] == "starter-untrained-densenet121"


def test_it_answers_head(client, db):
    assert client.head("/healthz").status_code == 200


def test_it_refuses_other_methods_in_json(client, db):
    response = client.post("/healthz")

    assert response.status_code == 405
    assert response["Allow"] == "GET, HEAD"
    assert response.json()["error"]["code"] == "method_not_allowed"
