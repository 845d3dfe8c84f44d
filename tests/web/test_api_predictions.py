"""The prediction API: POST /api/v1/predictions/ and what it returns, read back, listed, with the
heatmaps and the image; every role and every error in the one error shape."""

import hashlib
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone
from rest_framework.test import APIClient

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from tests.conftest import shared_data_path
from web.apis import PredictionCursorPagination

URL = "/api/v1/predictions/"
RESPONSE_KEYS = {
    "id",
    "created_at",
    "model",
    "findings",
    "heatmaps",
    "image_sha256",
    "image_url",
    "warning",
    "honesty",
    "ood",
}


@pytest.fixture(autouse=True)
def _fresh_throttle_counts():
    # Throttle counts live in the cache, which outlives each test's database rollback.
    cache.clear()
    yield
    cache.clear()


@pytest.fixture
def version_row(db):
    """A registry row without weights: enough for tests that never run the model."""
    return ModelVersion.objects.create(
        version_name="row-only-v1",
        storage_path="weights/none.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="a" * 64,
        untrained=True,
    )


def xray_path():
    return shared_data_path("nih_reproduce_chexnet", "images", "00000075_000.png")


def xray_upload() -> SimpleUploadedFile:
    path = xray_path()
    return SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")


def post_xray(client):
    return client.post(URL, {"image": xray_upload()}, format="multipart")


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    assert response["Content-Type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code
    return body["error"]


def logged_row(user, model, **extra) -> Prediction:
    """A prediction row as the engine writes it, without running the model."""
    findings = [
        {"name": name, "probability": 0.25, "threshold": 0.5, "positive": False} for name in model.class_names
    ]
    return Prediction.objects.create(
        model=model,
        image_url="images/none.png",
        results_json={
            "model": {
                "id": model.pk,
                "version_name": model.version_name,
                "sha256": model.sha256,
                "untrained": model.untrained,
            },
            "findings": findings,
            "untrained": model.untrained,
        },
        image_sha256="0" * 64,
        user=user,
        source=Prediction.SOURCE_API,
        heatmaps={name: [[0.0]] for name in model.class_names},
        **extra,
    )


# --- POST ------------------------------------------------------------------------------------


def test_it_creates_a_prediction_from_a_real_xray(api, clinician, starter_model):
    response = post_xray(api(clinician))

    assert response.status_code == 201, response.content
    body = response.json()
    assert set(body) == RESPONSE_KEYS
    assert body["model"] == {
        "id": starter_model.pk,
        "version_name": starter_model.version_name,
        "sha256": starter_model.sha256,
        "untrained": True,
        "precision": "fp32",
    }
    assert [finding["name"] for finding in body["findings"]] == DEFAULT_CLASS_NAMES
    assert len(body["findings"]) == 13
    for finding in body["findings"]:
        assert set(finding) == {"name", "score", "probability", "calibrated", "threshold", "positive"}
        assert 0.0 <= finding["score"] <= 1.0
        assert finding["positive"] == (finding["score"] >= finding["threshold"])
        # The starter has no calibration: its outputs are scores, not probabilities.
        assert finding["calibrated"] is False and finding["probability"] is None
    assert body["honesty"]["state"] == "untrained" and body["honesty"]["statement"] == body["warning"]
    assert set(body["heatmaps"]) == set(DEFAULT_CLASS_NAMES)
    assert body["heatmaps"]["Atelectasis"] == (
        f"http://testserver/api/v1/predictions/{body['id']}/heatmaps/Atelectasis.png"
    )
    assert body["image_url"] == f"http://testserver/api/v1/predictions/{body['id']}/image"
    assert body["image_sha256"] == hashlib.sha256(xray_path().read_bytes()).hexdigest()
    assert body["warning"].startswith("UNTRAINED model")
    assert response["Location"] == f"/api/v1/predictions/{body['id']}/"

    row = Prediction.objects.get(pk=body["id"])
    assert (row.user, row.source, row.model_id) == (clinician, "api", starter_model.pk)


def test_it_serves_the_heatmaps_and_the_image_to_the_same_token_and_reads_back(api, clinician, starter_model):
    client = api(clinician)
    posted = post_xray(client).json()

    for name in ("Atelectasis", "Pneumothorax"):
        heatmap = client.get(posted["heatmaps"][name])
        assert heatmap.status_code == 200
        assert heatmap["Content-Type"] == "image/png"
        assert heatmap.content.startswith(b"\x89PNG\r\n\x1a\n")
        assert "private" in heatmap["Cache-Control"]
    image = client.get(posted["image_url"])
    assert image.status_code == 200
    assert image["Content-Type"] == "image/png"
    assert image.content.startswith(b"\x89PNG\r\n\x1a\n")
    read_back = client.get(f"{URL}{posted['id']}/")
    assert read_back.status_code == 200
    assert read_back.json() == posted


def test_it_serves_the_heatmaps_and_the_image_to_a_browser_session(client, clinician, starter_model):
    session_api = APIClient()
    session_api.force_login(clinician)
    created = post_xray(session_api).json()
    client.force_login(clinician)

    # What an <img> on a page sends.
    heatmap = client.get(created["heatmaps"]["Cardiomegaly"], HTTP_ACCEPT="image/avif,image/webp,*/*;q=0.8")
    image = client.get(created["image_url"], HTTP_ACCEPT="image/png")

    assert (heatmap.status_code, heatmap["Content-Type"]) == (200, "image/png")
    assert (image.status_code, image["Content-Type"]) == (200, "image/png")


def test_it_answers_503_when_no_model_can_serve(api, clinician, db):
    error = assert_error(post_xray(api(clinician)), 503, "no_model")
    assert Prediction.objects.count() == 0
    assert error["message"]


def test_it_needs_the_image_field(api, clinician):
    error = assert_error(
        api(clinician).post(URL, {"file": xray_upload()}, format="multipart"), 400, "invalid"
    )
    assert error["message"].startswith("image:")


def test_it_refuses_a_text_file_with_415(api, clinician):
    upload = SimpleUploadedFile("notes.txt", b"this is not an x-ray\n" * 20, content_type="text/plain")

    error = assert_error(api(clinician).post(URL, {"image": upload}, format="multipart"), 415)

    assert error["message"]
    assert Prediction.objects.count() == 0


def test_it_refuses_an_empty_file_with_400(api, clinician):
    upload = SimpleUploadedFile("empty.png", b"", content_type="image/png")
    assert_error(api(clinician).post(URL, {"image": upload}, format="multipart"), 400)


def test_it_refuses_two_files_in_the_image_field_with_400(api, clinician, starter_model):
    two = [xray_upload(), xray_upload()]

    error = assert_error(api(clinician).post(URL, {"image": two}, format="multipart"), 400, "invalid")

    assert error["message"] == "image: Send one image per request (2 files were sent)."
    assert Prediction.objects.count() == 0


def test_it_refuses_a_json_body_with_415(api, clinician):
    error = assert_error(
        api(clinician).post(URL, {"image": "x"}, format="json"), 415, "unsupported_media_type"
    )
    assert "application/json" in error["message"]


def test_it_refuses_an_upload_over_the_limit_with_413(api, clinician, settings):
    settings.LUNGSITE_MAX_UPLOAD_MB = 1
    upload = SimpleUploadedFile("big.png", b"\0" * (2 * 1024 * 1024), content_type="image/png")

    error = assert_error(api(clinician).post(URL, {"image": upload}, format="multipart"), 413, "too_large")

    assert "1 MB" in error["message"]
    assert Prediction.objects.count() == 0


def test_it_refuses_a_body_over_the_request_limit_with_413_before_reading_it(api, clinician, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000

    error = assert_error(post_xray(api(clinician)), 413, "too_large")

    assert "MB" in error["message"]


def test_it_throttles_predictions_per_user(api, clinician, other_clinician, settings):
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"predictions": "2/minute"},
    }
    client = api(clinician)

    def junk():
        return {"image": SimpleUploadedFile("a.txt", b"not an image", content_type="text/plain")}

    for _ in range(2):
        assert client.post(URL, junk(), format="multipart").status_code == 415
    response = client.post(URL, junk(), format="multipart")

    assert_error(response, 429, "throttled")
    assert int(response["Retry-After"]) > 0
    assert api(other_clinician).post(URL, junk(), format="multipart").status_code == 415
    # Reading is not throttled.
    assert client.get(URL).status_code == 200


def test_it_checks_csrf_for_a_browser_session(clinician):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(clinician)

    error = assert_error(client.post(URL, {"image": xray_upload()}, format="multipart"), 403)

    assert "CSRF" in error["message"]


def test_it_refuses_other_methods_with_405(api, clinician):
    assert_error(api(clinician).put(URL, {}), 405, "method_not_allowed")
    assert_error(api(clinician).delete(f"{URL}1/"), 405, "method_not_allowed")


# --- who may do what ---------------------------------------------------------------------------


ENDPOINTS = [
    ("post", URL),
    ("get", URL),
    ("get", f"{URL}1/"),
    ("get", f"{URL}1/heatmaps/Atelectasis.png"),
    ("get", f"{URL}1/image"),
]


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_401_to_anonymous_callers(db, method, url):
    response = getattr(APIClient(), method)(url)

    assert_error(response, 401, "not_authenticated")
    assert response["WWW-Authenticate"] == "Token"


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_401_to_a_wrong_token(db, method, url):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Token 0123456789abcdef0123456789abcdef01234567")

    error = assert_error(getattr(client, method)(url), 401, "authentication_failed")

    assert error["message"] == "Invalid token."


@pytest.mark.parametrize(("method", "url"), ENDPOINTS)
def test_it_answers_403_to_a_model_admin(api, model_admin, method, url):
    assert_error(getattr(api(model_admin), method)(url), 403, "permission_denied")


def test_it_hides_a_prediction_from_another_clinician(api, clinician, other_clinician, version_row):
    row = logged_row(clinician, version_row)
    bob = api(other_clinician)

    for url in (f"{URL}{row.pk}/", f"{URL}{row.pk}/heatmaps/Atelectasis.png", f"{URL}{row.pk}/image"):
        error = assert_error(bob.get(url), 404, "not_found")
        assert error["message"] == f"Prediction {row.pk} not found."
    assert bob.get(URL).json()["results"] == []


def test_it_shows_every_prediction_to_auditors_and_superusers(
    api, clinician, other_clinician, auditor, superuser, version_row
):
    mine = logged_row(clinician, version_row)
    logged_row(other_clinician, version_row)

    for user in (auditor, superuser):
        client = api(user)
        assert len(client.get(URL).json()["results"]) == 2
        assert client.get(f"{URL}{mine.pk}/").json()["id"] == mine.pk


def test_it_lets_a_superuser_predict(api, superuser):
    upload = SimpleUploadedFile("notes.txt", b"not an image", content_type="text/plain")
    # Past the permission check: the upload itself is what gets refused.
    assert_error(api(superuser).post(URL, {"image": upload}, format="multipart"), 415)


def test_it_answers_404_for_unknown_ids_and_heatmap_names(api, clinician, version_row):
    row = logged_row(clinician, version_row)
    client = api(clinician)

    assert_error(client.get(f"{URL}{row.pk + 1000}/"), 404, "not_found")
    assert_error(client.get(f"{URL}{2**70}/"), 404, "not_found")
    error = assert_error(client.get(f"{URL}{row.pk}/heatmaps/Hernia.png"), 404, "not_found")
    assert "Hernia" in error["message"]


def test_it_answers_404_when_the_stored_image_is_missing(api, clinician, version_row):
    row = logged_row(clinician, version_row)

    error = assert_error(api(clinician).get(f"{URL}{row.pk}/image"), 404, "not_found")

    assert "missing" in error["message"]


# --- the list ----------------------------------------------------------------------------------


def test_it_lists_only_the_callers_predictions_newest_first(api, clinician, other_clinician, version_row):
    first = logged_row(clinician, version_row)
    second = logged_row(clinician, version_row)
    logged_row(other_clinician, version_row)

    body = api(clinician).get(URL).json()

    assert set(body) == {"next", "previous", "results"}  # cursor pages: no total count
    assert len(body["results"]) == 2
    assert [item["id"] for item in body["results"]] == [second.pk, first.pk]
    assert set(body["results"][0]) == RESPONSE_KEYS


def test_it_paginates_the_list(api, clinician, version_row, monkeypatch):
    monkeypatch.setattr(PredictionCursorPagination, "page_size", 2)  # DRF reads PAGE_SIZE at import
    rows = [logged_row(clinician, version_row) for _ in range(3)]
    client = api(clinician)

    page1 = client.get(URL).json()
    page2 = client.get(page1["next"]).json()
    back = client.get(page2["previous"]).json()

    assert [item["id"] for item in page1["results"]] == [rows[2].pk, rows[1].pk]
    assert [item["id"] for item in page2["results"]] == [rows[0].pk]
    assert "cursor=" in page1["next"] and page1["previous"] is None and page2["next"] is None
    assert [item["id"] for item in back["results"]] == [rows[2].pk, rows[1].pk]
    assert_error(client.get(URL, {"cursor": "not-a-cursor"}), 404, "not_found")


def test_it_filters_the_list_by_model_version(api, auditor, clinician, version_row):
    other = ModelVersion.objects.create(
        version_name="other-v2", storage_path="weights/x.pt", class_names=["A"], sha256="1" * 64
    )
    logged_row(clinician, version_row)
    logged_row(clinician, other)
    client = api(auditor)

    by_id = client.get(URL, {"model": other.pk}).json()
    by_name = client.get(URL, {"model": "other-v2"}).json()

    assert len(by_id["results"]) == len(by_name["results"]) == 1
    assert by_id["results"][0]["model"]["version_name"] == "other-v2"
    assert len(client.get(URL, {"model": "no-such-version"}).json()["results"]) == 0
    assert len(client.get(URL, {"model": str(2**70)}).json()["results"]) == 0


def test_it_filters_the_list_by_date(api, clinician, version_row):
    logged_row(clinician, version_row)
    client = api(clinician)
    today = timezone.now().date()
    tomorrow = today + timedelta(days=1)

    assert len(client.get(URL, {"created_after": today.isoformat()}).json()["results"]) == 1
    assert len(client.get(URL, {"created_after": tomorrow.isoformat()}).json()["results"]) == 0
    assert len(client.get(URL, {"created_before": today.isoformat()}).json()["results"]) == 0
    end_of_today = f"{tomorrow.isoformat()}T00:00:00Z"
    assert len(client.get(URL, {"created_before": end_of_today}).json()["results"]) == 1
    error = assert_error(client.get(URL, {"created_after": "yesterday"}), 400, "invalid")
    assert error["message"].startswith("created_after:")
    # A range that is empty by its bounds (equal, or inverted) is a valid query with no rows.
    for after, before in ((today, today), (tomorrow, today)):
        empty = client.get(URL, {"created_after": after.isoformat(), "created_before": before.isoformat()})
        assert empty.status_code == 200 and empty.json()["results"] == []
    # Empty parameters are no filter.
    assert (
        len(client.get(URL, {"created_after": "", "created_before": "", "model": ""}).json()["results"]) == 1
    )


def test_heatmap_urls_are_those_reverse_gives_for_any_finding_name(api, clinician, db):
    from django.urls import reverse

    names = ["Atelectasis", "Pleural_Thickening", "Nodule-2", "Pleural Thickening", "Épanchement", "a+b%c"]
    model = ModelVersion.objects.create(
        version_name="odd-names-v1", storage_path="weights/none.pt", class_names=names, sha256="b" * 64
    )
    row = logged_row(clinician, model)
    body = api(clinician).get(f"{URL}{row.pk}/").json()
    expected = {
        name: "http://testserver" + reverse("api-prediction-heatmap", kwargs={"pk": row.pk, "name": name})
        for name in names
    }
    assert body["heatmaps"] == expected
    recorded = {"id": model.pk, "version_name": "odd-names-v1", "sha256": "b" * 64, "untrained": False}
    assert body["model"] == {**recorded, "precision": "fp32"}  # rows from before precision existed
    # Issue 23: a version with no measured evaluation says so, as the untrained one does.
    assert body["warning"].startswith("NOT EVALUATED model")
