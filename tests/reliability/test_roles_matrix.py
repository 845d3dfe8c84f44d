"""Who reaches what: every page and endpoint x every role, CSRF on every form, revocable tokens,
and login throttling (README, Pages and roles: anonymous users reach no page but
login and no API but /healthz; clinicians predict and see their own; auditors read everything;
model admins run the registry; superusers have all)."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client
from PIL import Image
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from analysis.services import analyse
from audit.models import Prediction
from tests.reliability import corpus
from tests.reliability.conftest import error_of, post_image

ROLES = ("anonymous", "clinician", "other_clinician", "auditor", "model_admin", "superuser")
PNG = corpus.pil_bytes(Image.fromarray(corpus.chest_like(96)), "PNG")
LOGIN = 302  # a page's answer to an anonymous caller: to the login form
TO_AUDIT, TO_ADMIN = "302 /audit/", "302 /admin/"  # `/` sends these roles on to their own page

# (kind, method, url template, {role: status}); {p} is alice's prediction, {m} the active model.
#          anonymous clinician other auditor model-admin superuser
MATRIX = [
    ("page", "GET", "/", (LOGIN, 200, 200, TO_AUDIT, TO_ADMIN, 200)),
    ("page", "GET", "/predictions/{p}/", (LOGIN, 200, 404, 200, 404, 200)),
    ("page", "GET", "/history/", (LOGIN, 200, 200, 200, 200, 200)),
    ("page", "GET", "/audit/", (LOGIN, 403, 403, 200, 403, 200)),
    ("page", "GET", "/admin/", (LOGIN, LOGIN, LOGIN, LOGIN, 200, 200)),
    ("page", "GET", "/admin/registry/modelversion/", (LOGIN, LOGIN, LOGIN, LOGIN, 200, 200)),
    ("page", "GET", "/admin/registry/modelversion/{m}/change/", (LOGIN, LOGIN, LOGIN, LOGIN, 200, 200)),
    ("page", "GET", "/login/", (200, 200, 200, 200, 200, 200)),
    ("api", "POST", "/api/v1/predictions/", (401, 201, 201, 403, 403, 201)),
    ("api", "GET", "/api/v1/predictions/", (401, 200, 200, 200, 403, 200)),
    ("api", "GET", "/api/v1/predictions/{p}/", (401, 200, 404, 200, 403, 200)),
    ("api", "GET", "/api/v1/predictions/{p}/heatmaps/Mass.png", (401, 200, 404, 200, 403, 200)),
    ("api", "GET", "/api/v1/predictions/{p}/image", (401, 200, 404, 200, 403, 200)),
    ("api", "GET", "/api/v1/predictions/999999/", (401, 404, 404, 404, 403, 404)),
    ("api", "GET", "/api/v1/models/", (401, 200, 200, 200, 200, 200)),
    ("api", "GET", "/api/v1/models/{m}/", (401, 200, 200, 200, 200, 200)),
    ("api", "POST", "/api/v1/models/{m}/activate/", (401, 403, 403, 403, 200, 200)),
    ("api", "GET", "/api/v1/schema/", (401, 200, 200, 200, 200, 200)),
    # Swagger UI is a page for browsers: a session, not a token, and anonymous goes to the login form.
    ("page", "GET", "/api/v1/docs/", (LOGIN, 200, 200, 200, 200, 200)),
    ("api", "GET", "/healthz", (200, 200, 200, 200, 200, 200)),
]


@pytest.fixture
def people(clinician, other_clinician, auditor, model_admin, superuser):
    return {
        "anonymous": None,
        "clinician": clinician,
        "other_clinician": other_clinician,
        "auditor": auditor,
        "model_admin": model_admin,
        "superuser": superuser,
    }


@pytest.fixture
def alices_prediction(clinician, starter_model):
    return analyse(upload=SimpleUploadedFile("x.png", PNG, "image/png"), user=clinician, source="web")


def _call(kind: str, method: str, url: str, user):
    if kind == "page":
        client = Client()
        if user is not None:
            client.force_login(user)
        return client.generic(method, url)
    client = APIClient()
    if user is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Token {Token.objects.get_or_create(user=user)[0].key}")
    if method == "POST" and url == "/api/v1/predictions/":
        return post_image(client, PNG, "x.png")
    return client.generic(method, url)


def test_every_role_gets_the_expected_status_everywhere(people, alices_prediction, starter_model):
    mismatches, rows = [], []
    for kind, method, template, expected in MATRIX:
        url = template.format(p=alices_prediction.pk, m=starter_model.pk)
        got = []
        for role, want in zip(ROLES, expected, strict=True):
            response = _call(kind, method, url, people[role])
            got.append(response.status_code)
            if isinstance(want, str):  # a redirect to a given page
                status, location = want.split()
                if (response.status_code, response.headers.get("Location")) != (int(status), location):
                    mismatches.append(
                        f"{role:16s} {method} {url}: expected {want}, got {response.status_code} "
                        f"{response.headers.get('Location')}"
                    )
            elif response.status_code != want:
                mismatches.append(f"{role:16s} {method} {url}: expected {want}, got {response.status_code}")
            elif want == LOGIN and kind == "page":
                location = response.headers.get("Location", "")
                if "login" not in location:
                    mismatches.append(
                        f"{role:16s} {method} {url}: redirects to {location!r}, not a login form"
                    )
            elif kind == "api" and response.status_code >= 400:
                try:
                    error_of(response)
                except (AssertionError, ValueError) as exc:
                    mismatches.append(f"{role:16s} {method} {url}: error body not in the error shape ({exc})")
        rows.append(f"{method:4s} {url:48s} expected {expected} got {tuple(got)}")
    assert mismatches == [], "\n".join([*mismatches, "", *rows])


def test_lists_show_each_role_what_it_may_see(people, alices_prediction, token_client):
    def ids(role):
        response = token_client(people[role]).get("/api/v1/predictions/")
        assert response.status_code == 200
        return {item["id"] for item in response.json()["results"]}

    assert alices_prediction.pk in ids("clinician")
    assert alices_prediction.pk not in ids("other_clinician")
    assert alices_prediction.pk in ids("auditor")
    assert alices_prediction.pk in ids("superuser")
    client = Client()
    client.force_login(people["other_clinician"])
    assert f"/predictions/{alices_prediction.pk}/" not in client.get("/history/").content.decode()


def test_anonymous_api_calls_get_an_authentication_challenge(db):
    response = APIClient().get("/api/v1/predictions/")
    assert response.status_code == 401
    assert response.headers.get("WWW-Authenticate", "").startswith("Token")
    assert error_of(response)["code"] == "not_authenticated"


# --------------------------------------------------------------------------------------------
# CSRF: every form refuses a POST without the token


@pytest.fixture
def csrf_client():
    return Client(enforce_csrf_checks=True)


def _csrf_refused(response) -> bool:
    return response.status_code == 403 and b"CSRF" in response.content


def test_the_upload_form_needs_the_csrf_token(csrf_client, clinician, starter_model):
    csrf_client.force_login(clinician)
    response = csrf_client.post("/", {"image": SimpleUploadedFile("x.png", PNG, "image/png")})
    assert _csrf_refused(response), response.status_code
    assert Prediction.objects.count() == 0


def test_the_login_and_admin_login_forms_need_the_csrf_token(csrf_client, clinician, superuser):
    for url, user, password in (("/login/", "alice", "pw-alice"), ("/admin/login/", "root", "pw-root")):
        response = csrf_client.post(url, {"username": user, "password": password})
        assert _csrf_refused(response), (url, response.status_code)
        assert "_auth_user_id" not in csrf_client.session


def test_the_login_form_works_with_the_csrf_token(csrf_client, clinician):
    csrf_client.get("/login/")
    token = csrf_client.cookies["csrftoken"].value
    response = csrf_client.post(
        "/login/", {"username": "alice", "password": "pw-alice", "csrfmiddlewaretoken": token}
    )
    assert response.status_code == 302
    assert csrf_client.session["_auth_user_id"] == str(clinician.pk)


def test_logout_needs_the_csrf_token(csrf_client, clinician):
    csrf_client.force_login(clinician)
    assert _csrf_refused(csrf_client.post("/logout/"))
    assert csrf_client.session.get("_auth_user_id") == str(clinician.pk)


def test_admin_forms_and_actions_need_the_csrf_token(csrf_client, model_admin, starter_model):
    csrf_client.force_login(model_admin)
    for url, data in (
        (
            "/admin/registry/modelversion/",
            {"action": "activate_selected", "_selected_action": [starter_model.pk], "index": 0},
        ),
        (f"/admin/registry/modelversion/{starter_model.pk}/change/", {"notes": "changed"}),
        ("/admin/registry/modelversion/add/", {"version_name": "x"}),
        ("/admin/password_change/", {"old_password": "pw-dave", "new_password1": "x", "new_password2": "x"}),
        ("/admin/logout/", {}),
    ):
        response = csrf_client.post(url, data)
        assert _csrf_refused(response), (url, response.status_code)
    starter_model.refresh_from_db()
    assert starter_model.notes != "changed"


def test_session_authenticated_api_posts_need_the_csrf_token(clinician, model_admin, starter_model):
    for user, url in (
        (clinician, "/api/v1/predictions/"),
        (model_admin, f"/api/v1/models/{starter_model.pk}/activate/"),
    ):
        client = APIClient(enforce_csrf_checks=True)
        client.force_login(user)
        response = post_image(client, PNG, "x.png", url=url) if "predictions" in url else client.post(url)
        assert response.status_code == 403, (url, response.status_code)
        assert "CSRF" in error_of(response)["message"]
    assert Prediction.objects.count() == 0


# --------------------------------------------------------------------------------------------
# Tokens and brute force


def test_a_deleted_token_stops_working_at_once(clinician, starter_model):
    token = Token.objects.create(user=clinician)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    assert client.get("/api/v1/models/").status_code == 200
    token.delete()
    response = client.get("/api/v1/models/")
    assert response.status_code == 401
    assert error_of(response)["code"] == "authentication_failed"


def test_a_deactivated_users_token_stops_working(clinician, starter_model):
    token = Token.objects.create(user=clinician)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
    clinician.is_active = False
    clinician.save()
    assert client.get("/api/v1/models/").status_code == 401


@pytest.mark.parametrize(
    ("url", "username", "password"), [("/login/", "alice", "pw-alice"), ("/admin/login/", "root", "pw-root")]
)
def test_the_sixth_login_attempt_after_five_failures_is_locked_out(
    settings, clinician, superuser, other_clinician, url, username, password
):
    assert settings.AXES_FAILURE_LIMIT == 5
    client = Client()
    for attempt in range(5):
        response = client.post(url, {"username": username, "password": f"wrong-{attempt}"})
        assert response.status_code in (200, 429), response.status_code  # the 5th may already answer 429
        assert "_auth_user_id" not in client.session
    response = client.post(url, {"username": username, "password": password})  # the right one, too late
    assert response.status_code == 429, response.status_code
    assert "_auth_user_id" not in client.session

    # Locked per user and address: another account from the same address still logs in.
    other = Client()
    response = other.post("/login/", {"username": "bob", "password": "pw-bob"})
    assert response.status_code == 302 and other.session["_auth_user_id"] == str(other_clinician.pk)
