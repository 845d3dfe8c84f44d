"""The upload page `/`: who may use it, real uploads (one row each), refusals (no row)."""

import json

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from audit.models import Prediction
from tests.conftest import shared_data_path

XHR = {"HTTP_X_REQUESTED_WITH": "XMLHttpRequest"}


def _upload(path) -> SimpleUploadedFile:
    return SimpleUploadedFile(path.name, path.read_bytes())


def test_it_sends_anonymous_users_to_login(client, db):
    response = client.get("/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/"


def test_it_logs_in_from_the_login_page_and_lands_on_upload(client, clinician, starter_model):
    page = client.get(reverse("login"))
    html = page.content.decode()
    assert page.status_code == 200
    assert '<label for="id_username">' in html and '<label for="id_password">' in html
    assert "Not a medical device." in html

    wrong = client.post(reverse("login"), {"username": "alice", "password": "nope"})
    assert wrong.status_code == 200
    assert "Please enter a correct username and password" in wrong.content.decode()

    response = client.post(reverse("login"), {"username": "alice", "password": "pw-alice", "next": "/"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200


def test_it_logs_out_with_a_post_only(client, clinician):
    client.force_login(clinician)
    assert client.get(reverse("logout")).status_code == 405
    response = client.post(reverse("logout"))
    assert response.status_code == 302 and response["Location"] == reverse("login") + "?logged_out=1"
    # The browser drops its copies of what was seen, and the login page says so.
    assert response["Clear-Site-Data"] == '"cache"' and "no-store" in response["Cache-Control"]
    assert 'id="logged-out"' in client.get(response["Location"]).content.decode()
    assert client.get("/history/").status_code == 302


def test_it_sends_other_roles_on_to_their_own_page_and_refuses_their_uploads(
    client, auditor, model_admin, django_user_model
):
    # `/` is where logging in lands everyone; auditors read the log, model-admins run the registry.
    nobody = django_user_model.objects.create_user(username="nobody", password="pw-nobody")
    staff_without_role = django_user_model.objects.create_user(
        username="staff", password="pw-staff", is_staff=True
    )
    for user, landing in (
        (auditor, reverse("audit")),
        (model_admin, reverse("admin:index")),
        (nobody, None),
        (staff_without_role, None),
    ):
        client.force_login(user)
        response = client.get("/")
        if landing is None:
            assert response.status_code == 403, user.username
            assert "Ask an administrator for the right role" in response.content.decode()
        else:
            assert response.status_code == 302 and response["Location"] == landing, user.username
            assert client.get(landing).status_code == 200, user.username
        # An upload is refused, never redirected: the refusal must not look like a success.
        upload = client.post("/", {"image": SimpleUploadedFile("x.png", b"x")})
        assert upload.status_code == 403, user.username
    assert Prediction.objects.count() == 0


def test_it_shows_the_form_and_the_active_untrained_model(client, clinician, starter_model):
    client.force_login(clinician)
    response = client.get("/")
    html = response.content.decode()
    assert response.status_code == 200
    assert 'type="file"' in html
    assert 'accept=".png,.jpg,.jpeg,.dcm,image/png,image/jpeg,application/dicom"' in html
    assert 'id="upload-progress-bar"' in html
    assert "js/upload.js" in html
    assert starter_model.version_name in html
    assert starter_model.short_sha256 in html
    assert "Untrained model: its outputs are meaningless" in html


def test_it_shows_no_untrained_warning_for_a_trained_model(client, clinician):
    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

    ModelVersion.objects.create(
        version_name="chexnet-real",
        storage_path="w.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="d" * 64,
        is_active=True,
        untrained=False,
    )
    client.force_login(clinician)
    html = client.get("/").content.decode()
    assert "chexnet-real" in html
    assert "meaningless" not in html and "UNTRAINED" not in html
    # Never evaluated: the page says so instead.
    assert "NOT EVALUATED model" in html


def test_it_shows_no_warning_for_a_trained_evaluated_model(client, clinician):
    from datetime import timedelta

    from django.utils import timezone

    from registry.models import DEFAULT_CLASS_NAMES, Evaluation, ModelVersion

    version = ModelVersion.objects.create(
        version_name="chexnet-evaluated",
        storage_path="w.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="e" * 64,
        is_active=True,
        untrained=False,
        evaluated_at=timezone.now(),
    )
    evaluation = Evaluation.objects.create(
        version=version,
        evaluation_set="held-out set",
        set_sha256="0" * 64,
        n_images=400,
        per_class={},
        mean_auroc=0.81,
        mean_auroc_low=0.77,
        mean_auroc_high=0.85,
    )
    client.force_login(clinician)
    html = client.get("/").content.decode()
    assert "chexnet-evaluated" in html
    assert "UNTRAINED" not in html and "NOT EVALUATED" not in html and "NOT VALIDATED" not in html
    # At chance level (the interval includes 0.5) the page says NOT VALIDATED, with the numbers.
    Evaluation.objects.create(
        version=version,
        evaluation_set="another set",
        set_sha256="1" * 64,
        n_images=200,
        per_class={},
        mean_auroc=0.55,
        mean_auroc_low=0.45,
        mean_auroc_high=0.65,
        created_at=evaluation.created_at + timedelta(seconds=1),
    )
    html = client.get("/").content.decode()
    assert "NOT VALIDATED model" in html and "0.550 (95 % CI 0.450-0.650)" in html


def test_it_warns_when_no_model_is_active(client, clinician):
    client.force_login(clinician)
    html = client.get("/").content.decode()
    assert "No active model" in html


def test_it_shows_the_nav_for_the_role(client, clinician, superuser):
    client.force_login(clinician)
    html = client.get("/").content.decode()
    assert 'href="/history/"' in html and 'href="/api/v1/docs/"' in html
    assert 'href="/audit/"' not in html and 'href="/admin/"' not in html
    assert f'action="{reverse("logout")}"' in html and 'method="post"' in html

    client.force_login(superuser)
    html = client.get("/").content.decode()
    assert 'href="/audit/"' in html and 'href="/admin/"' in html


def test_it_analyses_a_real_png_and_redirects_to_its_result(client, clinician, starter_model):
    path = shared_data_path("torchxrayvision_tests", "00000001_000.png")
    client.force_login(clinician)
    response = client.post("/", {"image": _upload(path)})

    prediction = Prediction.objects.get()
    assert response.status_code == 302
    assert response["Location"] == reverse("prediction-detail", args=[prediction.pk])
    assert prediction.user == clinician
    assert prediction.source == "web"
    assert prediction.model == starter_model

    page = client.get(response["Location"])
    assert page.status_code == 200
    table = page.content.decode().split('id="findings"')[1].split("</table>")[0]
    assert table.count('class="mark mark-positive"') + table.count('class="mark mark-negative"') == 13


def test_it_analyses_a_real_dicom_for_the_script(client, clinician, starter_model):
    path = shared_data_path(
        "torchxrayvision_tests", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"
    )
    client.force_login(clinician)
    response = client.post("/", {"image": _upload(path)}, **XHR)

    prediction = Prediction.objects.get()
    assert response.status_code == 201
    assert response.json() == {
        "id": prediction.pk,
        "redirect": reverse("prediction-detail", args=[prediction.pk]),
    }


def test_its_result_page_images_load(client, clinician, starter_model):
    path = shared_data_path("torchxrayvision_tests", "00027426_000.png")
    client.force_login(clinician)
    location = client.post("/", {"image": _upload(path)})["Location"]
    prediction = Prediction.objects.get()
    top = max(prediction.results_json["findings"], key=lambda f: f["probability"])["name"]

    html = client.get(location).content.decode()
    heatmap = reverse("api-prediction-heatmap", args=[prediction.pk, top])
    image = reverse("api-prediction-image", args=[prediction.pk])
    assert f'src="{heatmap}"' in html and f'src="{image}"' in html
    png = client.get(heatmap)
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert b"".join(png).startswith(b"\x89PNG")
    assert client.get(image).status_code == 200


def test_it_shows_the_engines_message_for_a_file_that_is_no_image(client, clinician, starter_model):
    client.force_login(clinician)
    response = client.post("/", {"image": SimpleUploadedFile("notes.png", b"these are not pixels" * 50)})

    assert 400 <= response.status_code < 500
    html = response.content.decode()
    assert f"(HTTP {response.status_code})" in html
    assert 'id="upload-error"' in html and 'id="upload-error" role="alert" hidden' not in html
    assert Prediction.objects.count() == 0


def test_it_gives_the_script_the_refusal_as_json(client, clinician, starter_model):
    client.force_login(clinician)
    response = client.post("/", {"image": SimpleUploadedFile("x.dcm", b"DICM" * 40)}, **XHR)

    assert 400 <= response.status_code < 500
    body = json.loads(response.content)
    assert set(body["error"]) >= {"code", "message"} and body["error"]["message"]
    assert Prediction.objects.count() == 0


def test_it_refuses_an_empty_file(client, clinician, starter_model):
    client.force_login(clinician)
    response = client.post("/", {"image": SimpleUploadedFile("empty.png", b"")})
    assert response.status_code == 400
    assert "The file is empty." in response.content.decode()
    assert Prediction.objects.count() == 0


def test_it_refuses_an_oversize_file_with_413(client, clinician, starter_model, settings):
    settings.LUNGSITE_MAX_UPLOAD_MB = 1
    path = shared_data_path("torchxrayvision_tests", "covid-19-pneumonia-58-prior.jpg")  # 2.2 MB
    client.force_login(clinician)
    response = client.post("/", {"image": _upload(path)})
    assert response.status_code == 413
    assert "limit is 1 MB" in response.content.decode()
    assert Prediction.objects.count() == 0


def test_it_asks_for_a_file_when_none_is_sent(client, clinician, starter_model):
    client.force_login(clinician)
    response = client.post("/", {})
    assert response.status_code == 400
    assert "Choose a PNG, JPEG or DICOM file" in response.content.decode()


def test_it_answers_503_when_no_model_can_serve(client, clinician):
    path = shared_data_path("torchxrayvision_tests", "00000001_000.png")
    client.force_login(clinician)
    response = client.post("/", {"image": _upload(path)})
    assert response.status_code == 503
    assert "The service is unavailable (HTTP 503)" in response.content.decode()
    assert Prediction.objects.count() == 0

    response = client.post("/", {"image": _upload(path)}, **XHR)
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "no_model"


@pytest.mark.parametrize("method", ["get", "post"])
def test_it_needs_csrf_for_the_upload(method, clinician, starter_model):
    from django.test import Client

    csrf_client = Client(enforce_csrf_checks=True)
    csrf_client.force_login(clinician)
    response = getattr(csrf_client, method)("/")
    assert response.status_code == (200 if method == "get" else 403)


def test_it_makes_one_prediction_for_a_form_submitted_twice(client, clinician, starter_model):
    client.force_login(clinician)
    page = client.get("/").content.decode()
    nonce = page.split('name="nonce" value="')[1].split('"')[0]
    assert len(nonce) >= 16
    path = shared_data_path("nih_reproduce_chexnet", "images", "00000211_000.png")
    first = client.post("/", {"image": _upload(path), "nonce": nonce}, **XHR)
    second = client.post("/", {"image": _upload(path), "nonce": nonce}, **XHR)
    assert first.status_code == 201 and second.status_code == 201
    assert json.loads(second.content)["id"] == json.loads(first.content)["id"]
    assert Prediction.objects.count() == 1
    # A new rendering of the form has a new nonce: a new upload is a new prediction.
    other = client.get("/").content.decode().split('name="nonce" value="')[1].split('"')[0]
    assert other != nonce
    assert client.post("/", {"image": _upload(path), "nonce": other}, **XHR).status_code == 201
    assert Prediction.objects.count() == 2


def test_it_analyses_a_retry_of_a_refused_form(client, clinician, starter_model):
    client.force_login(clinician)
    nonce = "retry-nonce-0123456789"
    refused = client.post("/", {"image": SimpleUploadedFile("x.png", b"not an image"), "nonce": nonce}, **XHR)
    assert refused.status_code == 415 and Prediction.objects.count() == 0
    path = shared_data_path("nih_reproduce_chexnet", "images", "00000211_000.png")
    assert client.post("/", {"image": _upload(path), "nonce": nonce}, **XHR).status_code == 201
    assert Prediction.objects.count() == 1


def test_it_sends_no_store_on_the_upload_page(client, clinician, starter_model):
    client.force_login(clinician)
    assert "no-store" in client.get("/")["Cache-Control"]
