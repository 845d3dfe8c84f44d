"""`GET /api/v1/`: an index of the API's endpoints, not a 404."""

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def test_it_lists_the_endpoints_to_a_token_holder(clinician):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=clinician).key}")
    response = client.get("/api/v1/")
    assert response.status_code == 200
    body = response.json()
    urls = {(e["method"], e["url"]) for e in body["endpoints"] if "(model admins)" not in e["description"]}
    assert ("POST", "/api/v1/predictions/") in urls
    assert ("GET", "/api/v1/predictions/{id}/heatmaps/{finding}.png") in urls
    assert ("GET", "/api/v1/evaluations/{id}/") in urls
    listed = {(e["method"], e["url"]) for e in body["endpoints"]}
    assert {("POST", "/api/v1/models/{id}/activate/"), ("GET", "/api/v1/drift/")} <= listed
    assert "Token" in body["authentication"]
    assert "no-store" in response["Cache-Control"]
    # Each listed GET URL without placeholders answers (not a 404).
    for method, url in urls:
        if method == "GET" and "{" not in url and not url.endswith("/docs/"):
            assert client.get(url).status_code == 200, url


def test_it_asks_anonymous_callers_for_a_token():
    response = APIClient().get("/api/v1/")
    assert response.status_code == 401
    assert "error" in response.json()


def test_it_still_answers_unknown_paths_with_a_json_404(clinician):
    client = APIClient()
    client.force_authenticate(clinician)
    response = client.get("/api/v1/nothing-here/")
    assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
