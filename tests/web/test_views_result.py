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


def _prediction(user, version, probabilities=PROBABILITIES, heatmaps=None) -> Prediction:
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
        heatmaps=heatmaps or {},
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


def _with_maps(user, maps: dict) -> Prediction:
    """A prediction whose stored maps are zero but for one value per finding named in `maps`."""
    cams = {name: [[0.0] * 7 for _ in range(7)] for name in DEFAULT_CLASS_NAMES}
    for name, peak in maps.items():
        cams[name][3][3] = peak
    return _prediction(user, _version(), heatmaps=cams)


def test_it_shows_the_case_score_and_how_it_is_computed(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    # max(probability / threshold) = 0.91 / 0.5 (Effusion)
    assert '<span class="case-score-value mono" id="case-score">1.82</span>' in html
    assert "largest probability ÷ threshold" in html and "Effusion: 91.0 % ÷ 50.0 %" in html
    assert "Abnormal: 2 findings at or above threshold" in html
    assert "sorted by probability, highest first" in html


def test_it_says_no_finding_is_positive_below_every_threshold(client, clinician):
    prediction = _prediction(clinician, _version(), probabilities={"Effusion": 0.4})
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert 'id="case-score">0.80<' in html and "No finding at or above its threshold" in html


def test_it_shows_the_heat_layer_by_default_only_for_a_positive_finding(client, clinician):
    prediction = _with_maps(clinician, {"Effusion": 2.0, "Nodule": 1.0})
    client.force_login(clinician)
    positive = client.get(_url(prediction)).content.decode()  # Effusion, positive
    assert 'alt="Heat layer of Effusion over the X-ray">' in positive
    assert 'id="overlay-toggle" data-action="overlay" aria-pressed="true"' in positive
    negative = client.get(_url(prediction), {"heatmap": "Nodule"}).content.decode()
    assert 'alt="Heat layer of Nodule over the X-ray" hidden>' in negative
    assert 'aria-pressed="false" title="Heat layer on/off' in negative
    # Asked for explicitly (the no-script toggle), it shows.
    shown = client.get(_url(prediction), {"heatmap": "Nodule", "overlay": "1"}).content.decode()
    assert 'alt="Heat layer of Nodule over the X-ray">' in shown


def test_it_says_which_maps_are_empty_or_below_the_cut_off_on_one_scale(client, clinician):
    prediction = _with_maps(clinician, {"Effusion": 2.0, "Cardiomegaly": 1.0, "Mass": 0.2})
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert "peaks at 100 % of the case scale." in html  # Effusion, the strongest map of the case
    assert 'value="Cardiomegaly" data-src' in html and 'data-state="shown" data-peak="50"' in html
    assert 'data-state="faint" data-peak="10"' in html  # Mass: a tenth, below the cut-off
    assert html.count('data-state="empty"') == 10 and html.count(">empty map</span>") == 10
    assert "one scale for all findings of this case" in html
    faint = client.get(_url(prediction), {"heatmap": "Mass"}).content.decode()
    assert "below the 25 % cut-off; nothing drawn." in faint
    empty = client.get(_url(prediction), {"heatmap": "Nodule"}).content.decode()
    assert "empty map, the model's evidence is zero everywhere" in empty


def test_it_keeps_the_result_out_of_the_browsers_cache(client, clinician, prediction):
    client.force_login(clinician)
    response = client.get(_url(prediction))
    assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"]
