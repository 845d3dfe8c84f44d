"""Faults (docs/ops.md): the database going away and coming back, the
image store refusing writes, and a weights file corrupted in storage after its activation."""

from __future__ import annotations

import time

import pytest
from django.core.files.storage import FileSystemStorage, storages
from django.db import OperationalError, connection
from PIL import Image

from audit.models import Prediction
from registry import cache
from registry.models import DEFAULT_CLASS_NAMES
from registry.services import ActivationError, model_version_activate, model_version_register
from registry.storage import weights_storage
from tests.reliability import corpus, liveserver
from tests.reliability.conftest import error_of, post_image, stored_files
from tests.reliability.dbproxy import TcpProxy

PNG = corpus.pil_bytes(Image.fromarray(corpus.chest_like(96)), "PNG")


# --------------------------------------------------------------------------------------------
# (a) The database unreachable, on a real gunicorn against the real Postgres through a proxy


@pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs the real Postgres (set DATABASE_URL to postgres://...; CI does): a proxy between "
    "gunicorn and the database server is cut, which SQLite has no equivalent of",
)
@pytest.mark.django_db
def test_it_answers_503_while_the_database_is_unreachable_and_recovers(tmp_path):
    import httpx

    with liveserver.scratch_database() as (params, name):
        env = liveserver.site_env(liveserver.database_url(params, name), tmp_path / "data")
        site = liveserver.prepared_site(env)
        with TcpProxy((params["host"], params["port"])) as proxy:
            env["DATABASE_URL"] = liveserver.database_url(params, name, port=proxy.port)
            with liveserver.Gunicorn(env, workers=1, log=tmp_path / "gunicorn.log") as server:
                server.wait_ready()
                client = httpx.Client(base_url=server.url, timeout=30, trust_env=False)
                token = {"Authorization": f"Token {site['alice_token']}"}
                browser = httpx.Client(
                    base_url=server.url,
                    timeout=30,
                    trust_env=False,
                    cookies={"sessionid": site["alice_session"]},
                )

                def probe() -> dict[str, httpx.Response]:
                    return {
                        "healthz": client.get("/healthz"),
                        "page /": browser.get("/"),
                        "page /history/": browser.get("/history/"),
                        "api models": client.get("/api/v1/models/", headers=token),
                        "api list": client.get("/api/v1/predictions/", headers=token),
                        "api predict": client.post(
                            "/api/v1/predictions/",
                            headers=token,
                            files={"image": ("x.png", PNG, "image/png")},
                        ),
                    }

                healthy = probe()
                assert {k: r.status_code for k, r in healthy.items()} == {
                    "healthz": 200,
                    "page /": 200,
                    "page /history/": 200,
                    "api models": 200,
                    "api list": 200,
                    "api predict": 201,
                }, server.log_tail()

                proxy.cut()
                started = time.monotonic()
                down = probe()
                elapsed = time.monotonic() - started
                statuses = {k: r.status_code for k, r in down.items()}
                assert set(statuses.values()) == {503}, (statuses, server.log_tail())
                for key, response in down.items():
                    assert "database" in response.text.lower(), (key, response.text[:300])
                    if key == "healthz" or key.startswith("api"):
                        assert response.json()["error"]["code"] == "database_unavailable", response.text
                assert elapsed < 30, f"503s took {elapsed:.1f}s (connect_timeout is 5s)"

                proxy.restore()
                deadline = time.monotonic() + 30
                while client.get("/healthz").status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.5)
                recovered = {k: r.status_code for k, r in probe().items()}
                assert recovered == {k: r.status_code for k, r in healthy.items()}, (
                    recovered,
                    server.log_tail(),
                )
                assert server.process.poll() is None  # recovered by itself, no restart
                client.close()
                browser.close()


# --------------------------------------------------------------------------------------------
# (b) The image store failing


@pytest.fixture
def api(token_client, clinician, starter_model):
    return token_client(clinician)


def test_a_failing_image_store_gives_503_and_leaves_nothing(api, monkeypatch):
    def refuse(self, name, content):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(FileSystemStorage, "_save", refuse)
    response = post_image(api, PNG, "x.png")
    assert response.status_code == 503, response.content[:300]
    error = error_of(response)
    assert error["code"] == "storage_unavailable"
    assert "nothing was recorded" in error["message"]
    assert Prediction.objects.count() == 0
    assert stored_files() == []

    monkeypatch.undo()
    assert post_image(api, PNG, "x.png").status_code == 201  # and it recovers by itself


def test_a_failing_image_store_gives_503_on_the_page_too(client, clinician, starter_model, monkeypatch):
    monkeypatch.setattr(
        FileSystemStorage, "_save", lambda self, name, content: (_ for _ in ()).throw(OSError("EIO"))
    )
    client.force_login(clinician)
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = client.post("/", {"image": SimpleUploadedFile("x.png", PNG, "image/png")})
    assert response.status_code == 503
    assert b"unavailable" in response.content
    assert Prediction.objects.count() == 0
    assert stored_files() == []


def test_a_failing_row_write_removes_the_stored_image(api, monkeypatch):
    """The image is stored first; if the row then cannot be written the image must not stay."""

    def lost(self, *args, **kwargs):
        raise OperationalError("server closed the connection unexpectedly")

    monkeypatch.setattr(Prediction, "save_base", lost)  # the chained insert, on every database
    response = post_image(api, PNG, "x.png")
    assert response.status_code == 503, response.content[:300]
    assert error_of(response)["code"] == "database_unavailable"
    monkeypatch.undo()
    assert Prediction.objects.count() == 0
    assert stored_files() == []


# --------------------------------------------------------------------------------------------
# (c) Weights corrupted in storage after activation


@pytest.fixture
def two_versions(starter_model):
    second = model_version_register(
        data=liveserver.second_weights_bytes(),
        version_name=liveserver.SECOND_VERSION_NAME,
        class_names=DEFAULT_CLASS_NAMES,
        untrained=True,
    )
    return starter_model, second


def _corrupt(version) -> None:
    """Damages the version's stored weights and the serving graph written from them (what workers
    load)."""
    for name in filter(None, (version.storage_path, version.serving_graph_path)):
        with open(weights_storage().path(name), "r+b") as handle:
            handle.seek(4096)
            handle.write(b"\x00" * 64)


def _served_by(api) -> tuple[int, int]:
    response = post_image(api, PNG, "x.png")
    assert response.status_code == 201, response.content[:300]
    body = response.json()
    row = Prediction.objects.get(pk=body["id"])
    assert row.model_id == body["model"]["id"] == row.results_json["model"]["id"]
    return body["model"]["id"], body["id"]


def test_corrupted_weights_are_refused_at_the_next_activation(api, two_versions, model_admin, token_client):
    first, second = two_versions
    assert _served_by(api)[0] == first.pk
    model_version_activate(version=second)
    assert _served_by(api)[0] == second.pk
    model_version_activate(version=first)
    assert _served_by(api)[0] == first.pk

    _corrupt(second)
    with pytest.raises(ActivationError, match="sha256"):
        model_version_activate(version=second)
    response = token_client(model_admin).post(f"/api/v1/models/{second.pk}/activate/")
    assert 400 <= response.status_code < 500, response.content[:300]
    assert "sha256" in error_of(response)["message"]

    first.refresh_from_db()
    second.refresh_from_db()
    assert first.is_active and not second.is_active
    assert _served_by(api)[0] == first.pk


def test_serving_stays_on_the_last_good_version_when_the_active_one_cannot_load(api, two_versions):
    first, second = two_versions
    assert _served_by(api)[0] == first.pk  # this process has the first version loaded
    model_version_activate(version=second)  # valid when activated...
    _corrupt(second)  # ...corrupted before this process loaded it
    for _ in range(2):
        model_id, prediction_id = _served_by(api)
        assert model_id == first.pk  # the response and the audit row name what really served
    assert cache.get_active().version.pk == first.pk
    assert storages["models"].exists(second.storage_path)
