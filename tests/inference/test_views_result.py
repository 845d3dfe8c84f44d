"""The result page `/predictions/<id>/`: visible to its owner, auditors and superusers only."""

import pytest
from django.urls import reverse

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

PROBABILITIES = {"Effusion": 0.91, "Cardiomegaly": 0.62, "Mass": 0.33, "Nodule": 0.05}


def _version(name="starter-untrained", *, untrained=True, active=True) -> ModelVersion:
    return ModelVersion.objects.create(
        version_name=name,
        storage_path=f"{name}.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="a1b2c3d4e5f6" + "0" * 52,
        is_active=active,
        untrained=untrained,
    )


def _prediction(user, version, probabilities=PROBABILITIES) -> Prediction:
    findings = []
    for name in version.class_names:
        probability = probabilities.get(name, 0.1)
        findings.append(
            {"name": name, "probability": probability, "threshold": 0.5, "positive": probability >= 0.5}
        )
    return Prediction.objects.create(
        model=version,
        user=user,
        source="web",
        image_url="x.png",
        image_sha256="f" * 64,
        latency_ms=812.3,
        results_json={
            "model": {
                "id": version.pk,
                "version_name": version.version_name,
                "sha256": version.sha256,
                "untrained": version.untrained,
            },
            "findings": findings,
            "untrained": version.untrained,
        },
    )


@pytest.fixture
def prediction(clinician):
    return _prediction(clinician, _version())


def _url(prediction) -> str:
    return reverse("prediction-detail", args=[prediction.pk])


def test_it_sends_anonymous_users_to_login(client, prediction):
    response = client.get(_url(prediction))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_it_shows_the_owner_every_finding_sorted(client, clinician, prediction):
    client.force_login(clinician)
    response = client.get(_url(prediction))
    html = response.content.decode()

    assert response.status_code == 200
    assert html.count('<tr class="') == 13
    rows = [name for name in html.split('data-finding="')[1:]]
    names = [row.split('"', 1)[0] for row in rows]
    assert names[:4] == ["Effusion", "Cardiomegaly", "Mass", "Atelectasis"]
    assert html.count("mark mark-positive") == 2
    assert html.count("mark mark-negative") == 11
    assert 'style="width: 91.0%"' in html and 'style="left: 50.0%"' in html
    assert "2 of 13 findings above threshold" in html


def test_it_shows_the_image_and_the_top_findings_heatmap_first(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()

    assert f'src="/api/v1/predictions/{prediction.pk}/image"' in html
    assert f'id="heatmap" src="/api/v1/predictions/{prediction.pk}/heatmaps/Effusion.png"' in html
    assert 'id="heatmap-opacity"' in html and 'type="range"' in html
    assert html.count("<option ") == 13
    assert 'value="Effusion" data-src' in html


def test_it_shows_the_heatmap_asked_for(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction), {"heatmap": "Pleural_Thickening"}).content.decode()
    assert (
        f"/api/v1/predictions/{prediction.pk}/heatmaps/Pleural_Thickening.png"
        in html.split('id="heatmap"')[1]
    )

    html = client.get(_url(prediction), {"heatmap": "<script>"}).content.decode()
    assert "heatmaps/Effusion.png" in html.split('id="heatmap"')[1]
    assert "<script>" not in html.split("<main")[1].split("</main>")[0]


def test_it_shows_the_model_the_time_the_image_hash_and_the_disclaimer(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()

    assert "starter-untrained" in html
    assert ">a1b2c3d4e5f6<" in html
    assert "f" * 64 in html
    assert prediction.created_at.strftime("%Y-%m-%d %H:%M:%S") in html
    assert "UNTRAINED model: these results are meaningless" in html
    assert "Not a medical device; for education and research." in html


def test_it_has_no_untrained_warning_for_a_trained_model(client, clinician):
    prediction = _prediction(clinician, _version("chexnet-real", untrained=False))
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert "chexnet-real" in html
    assert "meaningless" not in html and "UNTRAINED" not in html


def test_it_hides_the_result_from_other_clinicians(client, other_clinician, prediction):
    client.force_login(other_clinician)
    assert client.get(_url(prediction)).status_code == 404


def test_it_answers_404_for_an_unknown_prediction(client, clinician, prediction):
    client.force_login(clinician)
    assert client.get(reverse("prediction-detail", args=[prediction.pk + 1000])).status_code == 404


@pytest.mark.parametrize("role", ["auditor", "superuser"])
def test_it_shows_the_result_to_auditors_and_superusers(client, prediction, role, request):
    client.force_login(request.getfixturevalue(role))
    response = client.get(_url(prediction))
    assert response.status_code == 200
    assert "by alice" in response.content.decode()
