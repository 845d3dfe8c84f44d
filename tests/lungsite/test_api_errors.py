"""One error shape for the whole API, also for errors that happen outside a DRF view."""

import pytest
from django.core.exceptions import RequestDataTooBig
from django.test import RequestFactory
from rest_framework import exceptions
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from common import api_errors
from common.errors import NoActiveModel


def assert_error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.content
    assert response["Content-Type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["code"] == code
    return body["error"]["message"]


@pytest.mark.parametrize("debug", [False, True])
def test_it_answers_unknown_api_v1_paths_in_json(client, db, settings, debug):
    settings.DEBUG = debug

    message = assert_error(client.get("/api/v1/no-such-thing/"), 404, "not_found")

    assert message == "No API endpoint at /api/v1/no-such-thing/."
    assert_error(client.post("/api/v1/no-such-thing/"), 404, "not_found")


def test_it_hints_at_a_missing_trailing_slash(client, db):
    message = assert_error(client.get("/api/v1/predictions"), 404, "not_found")

    assert "Did you mean /api/v1/predictions/" in message


def test_it_answers_other_unknown_api_paths_in_json(client, db):
    assert_error(client.get("/api/v2/predictions/"), 404, "not_found")


def test_it_keeps_html_404_pages_outside_the_api(client, db):
    response = client.get("/no-such-page/")

    assert response.status_code == 404
    assert not response["Content-Type"].startswith("application/json")


def test_it_answers_a_crash_in_an_api_view_with_a_json_500(clinician, monkeypatch):
    def crash(**kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr("audit.selectors.prediction_get_for", crash)
    client = APIClient(raise_request_exception=False)
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=clinician).key}")

    message = assert_error(client.get("/api/v1/predictions/1/"), 500, "server_error")

    assert "boom" not in message


def test_it_turns_an_oversize_body_into_413():
    response = api_errors.exception_handler(RequestDataTooBig("too big"), {})

    assert response.status_code == 413
    assert response.data == {"error": {"code": "too_large", "message": "The request body is too large."}}


def test_it_turns_an_oversize_body_outside_drf_into_a_json_413():
    request = RequestFactory().post("/api/v1/predictions/")

    response = api_errors.handler400(request, RequestDataTooBig("too big"))

    assert response.status_code == 413


def test_it_flattens_validation_errors_into_one_message():
    exc = exceptions.ValidationError({"image": ["No file was submitted."], "non_field_errors": ["Bad."]})

    response = api_errors.exception_handler(exc, {})

    assert response.status_code == 400
    assert response.data == {"error": {"code": "invalid", "message": "image: No file was submitted. Bad."}}


def test_it_keeps_the_code_of_a_service_error():
    exc = NoActiveModel("No model is active.")

    response = api_errors.exception_handler(exc, {})

    assert (response.status_code, response.data["error"]["code"]) == (503, "no_model")
