"""The registry API: GET /api/v1/models/, GET /api/v1/models/<id>/, POST .../activate/."""

import pytest
from rest_framework.test import APIClient

from registry import selectors
from registry.models import DEFAULT_CLASS_NAMES, ActivationEvent, ModelVersion
from registry.services import model_version_register
from tests.conftest import starter_weights_bytes

URL = "/api/v1/models/"


@pytest.fixture
def second_version(starter_model):
    """A loadable, inactive version besides the active starter."""
    return model_version_register(
        data=starter_weights_bytes(),
        version_name="starter-copy-v2",
        class_names=DEFAULT_CLASS_NAMES,
        thresholds={"Edema": 0.7},
        auroc=0.81,
        notes="same weights, other thresholds",
    )


@pytest.fixture
def broken_version(db):
    """A row whose weights file is not in storage: activation must refuse it."""
    return ModelVersion.objects.create(
        version_name="broken-v9", storage_path="weights/missing.pt", class_names=["A", "B"], sha256="b" * 64
    )


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


ENDPOINTS = [("get", URL), ("get", f"{URL}1/"), ("post", f"{URL}1/activate/")]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_401_to_anonymous_callers(db, method, url):
    response = getattr(APIClient(), method)(url)

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_401_to_a_wrong_token(db, method, url):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token not-a-real-token")

    assert_error(getattr(client, method)(url), 401, "authentication_failed")


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_403_to_a_user_without_a_role(api, django_user_model, method, url):
    nobody = django_user_model.objects.create_user(username="eve", password="pw-eve")

    assert_error(getattr(api(nobody), method)(url), 403, "permission_denied")


def test_it_lists_versions_to_every_role(api, clinician, auditor, model_admin, superuser, second_version):
    for user in (clinician, auditor, model_admin, superuser):
        body = api(user).get(URL).json()
        assert body["count"] == 2
        assert [item["version_name"] for item in body["results"]] == [
            "starter-copy-v2",
            "starter-untrained-densenet121",
        ]


def test_it_shows_a_version_with_its_thresholds_and_auroc(api, clinician, second_version):
    response = api(clinician).get(f"{URL}{second_version.pk}/")

    assert response.status_code == 200
    body = response.json()
    assert body["id"] == second_version.pk
    assert body["class_names"] == DEFAULT_CLASS_NAMES
    assert body["thresholds"]["Edema"] == 0.7
    assert body["thresholds"]["Mass"] == 0.5
    assert len(body["thresholds"]) == 13
    assert body["accuracy_auroc"] == 0.81
    assert body["per_class_auroc"] == {}
    assert body["sha256"] == second_version.sha256
    assert len(body["serving_graph_sha256"]) == 64
    assert body["serving_graph_sha256"] == second_version.serving_graph_sha256
    assert (body["is_active"], body["activated_at"], body["untrained"]) == (False, None, False)
    # Issue 23: registered with a claimed AUROC but never evaluated here, so it says so.
    assert body["warning"].startswith("NOT EVALUATED model")
    assert body["preprocessing"]["input_size"] == 224


def test_it_warns_plainly_about_the_untrained_starter(api, clinician, starter_model):
    body = api(clinician).get(f"{URL}{starter_model.pk}/").json()

    assert body["untrained"] is True and body["is_active"] is True
    assert body["activated_at"] is not None
    assert body["warning"].startswith("UNTRAINED model")


def test_it_answers_404_for_an_unknown_version(api, clinician, db):
    error = assert_error(api(clinician).get(f"{URL}999/"), 404, "not_found")

    assert error["message"] == "Model version 999 not found."
    assert_error(api(clinician).get(f"{URL}{2**70}/"), 404, "not_found")


def test_it_lets_a_model_admin_activate_a_version(api, model_admin, starter_model, second_version):
    response = api(model_admin).post(f"{URL}{second_version.pk}/activate/")

    assert response.status_code == 200, response.content
    body = response.json()
    assert body["id"] == second_version.pk
    assert body["is_active"] is True
    assert body["activated_at"] is not None
    assert selectors.model_version_get_active().pk == second_version.pk
    event = ActivationEvent.objects.get(version=second_version)
    assert (event.activated_by, event.via, event.previous) == (model_admin, "api", starter_model)


def test_it_lets_a_superuser_activate_a_version(api, superuser, second_version):
    assert api(superuser).post(f"{URL}{second_version.pk}/activate/").status_code == 200
    assert selectors.model_version_get_active().pk == second_version.pk


def test_it_refuses_activation_to_clinicians_and_auditors(api, clinician, auditor, second_version):
    for user in (clinician, auditor):
        assert_error(api(user).post(f"{URL}{second_version.pk}/activate/"), 403, "permission_denied")
    assert selectors.model_version_get_active().pk != second_version.pk


def test_it_refuses_weights_that_do_not_load_with_409(api, model_admin, starter_model, broken_version):
    error = assert_error(
        api(model_admin).post(f"{URL}{broken_version.pk}/activate/"), 409, "activation_failed"
    )

    assert "broken-v9" in error["message"]
    assert selectors.model_version_get_active().pk == starter_model.pk


def test_it_answers_404_when_activating_an_unknown_version(api, model_admin, db):
    assert_error(api(model_admin).post(f"{URL}999/activate/"), 404, "not_found")


def test_it_allows_only_post_on_activate(api, model_admin, db):
    assert_error(api(model_admin).get(f"{URL}1/activate/"), 405, "method_not_allowed")
    assert_error(api(model_admin).delete(f"{URL}1/"), 405, "method_not_allowed")


def test_it_needs_a_csrf_token_when_activating_with_a_session(model_admin, second_version):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(model_admin)

    error = assert_error(client.post(f"{URL}{second_version.pk}/activate/"), 403)

    assert "CSRF" in error["message"]
    assert selectors.model_version_get_active().pk != second_version.pk


def test_it_answers_503_when_the_weights_store_is_down(
    api, model_admin, starter_model, second_version, monkeypatch
):
    from django.core.files.storage import storages

    def unreachable(*args, **kwargs):
        raise ConnectionError("storage host unreachable")

    monkeypatch.setattr(storages["models"], "open", unreachable)
    response = api(model_admin).post(f"/api/v1/models/{second_version.pk}/activate/")
    assert_error(response, 503, "storage_unavailable")
    starter_model.refresh_from_db()
    assert starter_model.is_active  # nothing changed


def test_activation_refuses_an_override_reason_that_is_not_text(api, model_admin, second_version):
    response = api(model_admin).post(
        f"{URL}{second_version.pk}/activate/", {"override_reason": 12}, format="json"
    )
    assert response.status_code == 400 and response.json()["error"]["code"] == "invalid"
    assert "override_reason" in response.json()["error"]["message"]
    second_version.refresh_from_db()
    assert not second_version.is_active
