"""The result page `/predictions/<id>/` (visible to its owner, auditors and superusers only) and the
gray levels its viewer windows, `/predictions/<id>/pixels`."""

import json
import re
from datetime import timedelta

import numpy as np
import pytest
from django.urls import reverse
from django.utils import timezone

from audit.models import Prediction
from engine.heatmap_codec import heatmaps_encode
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


def _validated(version: ModelVersion) -> None:
    """A held-out evaluation whose mean-AUROC interval lies above chance, in force from yesterday."""
    from registry.models import Evaluation

    Evaluation.objects.create(
        version=version,
        evaluation_set="held-out test set",
        set_sha256="e" * 64,
        n_images=200,
        per_class={},
        mean_auroc=0.85,
        mean_auroc_low=0.80,
        mean_auroc_high=0.90,
        created_at=timezone.now() - timedelta(days=1),
    )


def _prediction(
    user, version, probabilities=PROBABILITIES, heatmaps=None, *, heatmap_data=b"", image_url="x.png", **extra
) -> Prediction:
    when = {"created_at": extra.pop("created_at")} if "created_at" in extra else {}
    findings = []
    for name in version.class_names:
        probability = probabilities.get(name, 0.1)
        findings.append(
            {"name": name, "probability": probability, "threshold": 0.5, "positive": probability >= 0.5}
        )
    results = {
        "model": {
            "id": version.pk,
            "version_name": version.version_name,
            "sha256": version.sha256,
            "untrained": version.untrained,
        },
        "findings": findings,
        "untrained": version.untrained,
    }
    results.update(extra.pop("results", {}))
    return Prediction.objects.create(
        model=version,
        user=user,
        source=extra.pop("source", "web"),
        image_url=image_url,
        image_sha256="f" * 64,
        latency_ms=812.3,
        heatmaps=heatmaps or {},
        heatmap_data=heatmap_data,
        results_json=results,
        **when,
    )


@pytest.fixture
def prediction(clinician):
    return _prediction(clinician, _version())


def _url(prediction) -> str:
    return reverse("prediction-detail", args=[prediction.pk])


def _viewer(html: str) -> dict:
    return json.loads(
        html.split('<script id="viewer-data" type="application/json">')[1].split("</script>")[0]
    )


def test_it_sends_anonymous_users_to_login(client, prediction):
    response = client.get(_url(prediction))
    assert response.status_code == 302
    assert response["Location"].startswith(reverse("login") + "?next=")


def test_it_shows_the_owner_every_finding_sorted_with_scores_out_of_100(client, clinician, prediction):
    client.force_login(clinician)
    response = client.get(_url(prediction))
    html = response.content.decode()

    assert response.status_code == 200
    rows = [name for name in html.split('data-finding="')[1:]]
    names = [row.split('"', 1)[0] for row in rows]
    assert len(names) == 13 and names[:4] == ["Effusion", "Cardiomegaly", "Mass", "Atelectasis"]
    assert html.count("mark mark-positive") == 2
    assert html.count("mark mark-negative") == 11
    assert 'style="width: 91.0%"' in html and 'style="left: 50.0%"' in html
    assert '<span class="mono prob-value">91</span>' in html
    assert "2 of 13 findings above threshold" in html
    table = html.split('id="findings"')[1].split("</table>")[0]
    assert "%" not in table.split("</thead>")[1].replace("%;", "").replace('%"', "")


def test_it_never_rounds_a_score_to_100_or_0_and_marks_the_borderline_band(client, clinician):
    probabilities = {"Effusion": 0.9996, "Mass": 0.52, "Nodule": 0.47, "Edema": 0.001, "Fibrosis": 0.44}
    prediction = _prediction(clinician, _version(), probabilities)
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert '<span class="mono prob-value">&gt;99</span>' in html and "100.0 %" not in html
    assert '<span class="mono prob-value">&lt;1</span>' in html
    rows = {part.split('"', 1)[0]: part for part in html.split('data-finding="')[1:]}
    assert "mark-borderline" in rows["Mass"].split("</tr>")[0]  # 52 against 50: positive, borderline
    assert "mark-borderline" in rows["Nodule"].split("</tr>")[0]  # 47: negative, borderline
    assert "mark-borderline" not in rows["Fibrosis"].split("</tr>")[0]  # 44: 6 points away
    assert "mark-borderline" not in rows["Effusion"].split("</tr>")[0]


def test_it_names_the_top_finding_with_its_score_and_threshold(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert 'id="case-score" title="Score of the top finding, 0-100">91</span>' in html
    assert "Top finding: Effusion" in html and "score 91, threshold 50" in html
    assert "2 findings above threshold" in html


def test_it_says_no_finding_is_positive_below_every_threshold(client, clinician):
    prediction = _prediction(clinician, _version(), probabilities={"Effusion": 0.4})
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert 'id="case-score"' in html and ">40</span>" in html
    assert "No finding above its threshold" in html and "Closest: Effusion" in html


def test_it_drafts_a_report_line_with_scores_and_the_versions_state_never_a_diagnosis(client, clinician):
    prediction = _prediction(clinician, _version(), {"Effusion": 0.91, "Mass": 0.52, "Nodule": 0.47})
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    line = html.split('id="report-line"')[1].split(">", 1)[1].split("</textarea>")[0]
    assert line.startswith("AI findings (lungsite starter-untrained, UNTRAINED, random weights")
    assert "Effusion score 91 (threshold 50); Mass score 52 (threshold 50, borderline)" in line
    assert (
        "11 other findings below threshold; borderline below: Nodule score 47 (threshold 50, borderline)"
        in line
    )
    assert line.endswith("Model output for review, not a diagnosis.")

    trained = _version("chexnet-real", untrained=False, active=False)
    _validated(trained)
    html = client.get(_url(_prediction(clinician, trained, {"Edema": 0.2}))).content.decode()
    line = html.split('id="report-line"')[1].split(">", 1)[1].split("</textarea>")[0]
    assert line.startswith(
        "AI findings (lungsite chexnet-real, not validated): no finding above its threshold"
    )
    assert "highest: Edema score 20 (threshold 50)" in line


def test_it_shows_the_honesty_statement_beside_the_scores(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    side = html.split('<div class="result-side">')[1]
    assert side.index("UNTRAINED model: this result comes from a network with random weights") < side.index(
        'id="case-score"'
    )
    # Recorded at analysis time: that statement, whatever the version says now.
    recorded = _prediction(
        clinician,
        _version("v-eval", untrained=False, active=False),
        results={"honesty": {"state": "not_validated", "statement": "NOT VALIDATED: chance-level AUROC."}},
    )
    html = client.get(_url(recorded)).content.decode()
    assert "NOT VALIDATED: chance-level AUROC." in html and "honesty-not_validated" in html
    assert "(lungsite v-eval, not validated)" in html


def test_it_shows_the_image_and_draws_the_maps_of_new_rows(client, clinician):
    cams = np.zeros((13, 7, 7), dtype=np.float32)
    cams[DEFAULT_CLASS_NAMES.index("Effusion"), 5, 1] = 2.0  # the strongest map of the case
    cams[DEFAULT_CLASS_NAMES.index("Cardiomegaly"), 3, 3] = 1.0
    cams[DEFAULT_CLASS_NAMES.index("Mass"), 2, 2] = 0.2  # a tenth: below the cut-off
    prediction = _prediction(clinician, _version(), heatmap_data=heatmaps_encode(cams))
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()

    assert f'src="/api/v1/predictions/{prediction.pk}/image"' in html
    assert "no map stored" not in html
    viewer = _viewer(html)
    assert viewer["pixels"] == f"/predictions/{prediction.pk}/pixels"
    assert viewer["selected"] == "Effusion" and viewer["layerOn"] is True
    findings = {f["name"]: f for f in viewer["findings"]}
    assert findings["Effusion"]["map_state"] == "shown" and findings["Effusion"]["map"][5][1] == 1.0
    assert findings["Cardiomegaly"]["map"][3][3] == pytest.approx(0.5, abs=0.01)
    assert findings["Mass"]["map_state"] == "faint" and findings["Nodule"]["map_state"] == "empty"
    assert len(viewer["colours"]) == 256
    assert "peaks at 100 % of the case's strongest map." in html
    faint = client.get(_url(prediction), {"heatmap": "Mass"}).content.decode()
    assert "below the 25 % cut-off; nothing drawn." in faint
    empty = client.get(_url(prediction), {"heatmap": "Nodule"}).content.decode()
    assert "empty map, the model's evidence is zero everywhere" in empty


def test_it_still_reads_the_json_maps_of_chain_version_1_rows(client, clinician):
    cams = {name: [[0.0] * 7 for _ in range(7)] for name in DEFAULT_CLASS_NAMES}
    cams["Effusion"][3][3] = 2.0
    prediction = _prediction(clinician, _version(), heatmaps=cams)
    client.force_login(clinician)
    findings = {f["name"]: f for f in _viewer(client.get(_url(prediction)).content.decode())["findings"]}
    assert findings["Effusion"]["map_state"] == "shown" and findings["Effusion"]["map"][3][3] == 1.0


def test_it_shows_the_heatmap_asked_for_without_javascript(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction), {"heatmap": "Pleural_Thickening"}).content.decode()
    assert (
        f"/api/v1/predictions/{prediction.pk}/heatmaps/Pleural_Thickening.png"
        in html.split('id="heatmap"')[1]
    )
    assert _viewer(html)["selected"] == "Pleural_Thickening" and _viewer(html)["layerOn"] is False

    html = client.get(_url(prediction), {"heatmap": "<script>"}).content.decode()
    assert "heatmaps/Effusion.png" in html.split('id="heatmap"')[1]
    assert "<script>" not in html.split("<main")[1].split("</main>")[0].split('id="viewer-data"')[0]
    shown = client.get(_url(prediction), {"heatmap": "Nodule", "overlay": "1"}).content.decode()
    assert 'alt="Heat layer of Nodule over the X-ray">' in shown and _viewer(shown)["layerOn"] is True


def test_it_shows_the_model_the_time_the_image_hash_and_the_disclaimer(client, clinician, prediction):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()

    assert "starter-untrained" in html
    assert ">a1b2c3d4e5f6<" in html
    assert "f" * 64 in html
    assert prediction.created_at.strftime("%Y-%m-%d %H:%M:%S") in html
    assert "UNTRAINED model" in html
    assert "Not a medical device; for education and research." in html


def test_it_has_no_untrained_warning_for_a_trained_evaluated_model(client, clinician):
    version = _version("chexnet-real", untrained=False)
    _validated(version)
    prediction = _prediction(clinician, version)
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    assert "chexnet-real" in html
    assert "meaningless" not in html and "UNTRAINED" not in html and "NOT EVALUATED" not in html


def test_it_hides_the_result_from_other_clinicians(client, other_clinician, prediction):
    client.force_login(other_clinician)
    assert client.get(_url(prediction)).status_code == 404
    assert client.get(reverse("prediction-pixels", args=[prediction.pk])).status_code == 404


def test_it_answers_404_for_an_unknown_prediction(client, clinician, prediction):
    client.force_login(clinician)
    assert client.get(reverse("prediction-detail", args=[prediction.pk + 1000])).status_code == 404


@pytest.mark.parametrize("role", ["auditor", "superuser"])
def test_it_shows_the_result_to_auditors_and_superusers(client, prediction, role, request):
    client.force_login(request.getfixturevalue(role))
    response = client.get(_url(prediction))
    assert response.status_code == 200
    assert "by alice" in response.content.decode()


def test_it_keeps_the_result_out_of_the_browsers_cache(client, clinician, prediction):
    client.force_login(clinician)
    response = client.get(_url(prediction))
    assert "no-store" in response["Cache-Control"] and "private" in response["Cache-Control"]
    # And a copy kept anyway (the back/forward cache) is blanked and fetched again.
    html = response.content.decode()
    assert 'addEventListener("pageshow"' in html and "window.location.reload()" in html


def test_it_lists_the_feedback_in_the_findings_order_and_confirms_a_save_at_the_form(
    client, clinician, prediction
):
    client.force_login(clinician)
    html = client.get(_url(prediction)).content.decode()
    findings = [part.split('"', 1)[0] for part in html.split('data-finding="')[1:]]
    feedback = html.split('id="feedback"')[1]
    marks = [
        part.split("-present", 1)[0] for part in feedback.split('id="label-')[1:] if "-present" in part[:60]
    ]
    assert marks == findings

    response = client.post(reverse("prediction-labels", args=[prediction.pk]), {"label-Mass": "present"})
    assert response.status_code == 302 and response["Location"] == _url(prediction) + "#feedback"
    html = client.get(_url(prediction)).content.decode()
    status = html.split('id="feedback-status"')[1].split("</div>")[0]
    assert "Feedback saved for 1 finding: Mass." in status
    assert "Feedback saved" not in html.split('id="feedback"')[0]  # not at the top of the page
    again = client.post(reverse("prediction-labels", args=[prediction.pk]), {"label-Mass": "present"})
    assert again["Location"].endswith("#feedback")
    assert "Nothing changed" in client.get(_url(prediction)).content.decode()


# ------------------------------------------------------------------------------------------------
# The same patient's earlier results (PACS)


def _received(prediction, *, patient_key: str):
    from pacs.models import ReceivedInstance

    return ReceivedInstance.objects.create(
        source="c-store",
        state="done",
        prediction=prediction,
        patient_key=patient_key,
        study_instance_uid="1.2.3",
        sop_instance_uid=f"1.2.3.{prediction.pk}",
    )


def test_it_shows_the_same_patients_earlier_results_side_by_side(client, auditor):
    version = _version()
    now = timezone.now()
    older = _prediction(None, version, {"Effusion": 0.55}, source="pacs", created_at=now - timedelta(days=60))
    old = _prediction(None, version, {"Effusion": 0.71}, source="pacs", created_at=now - timedelta(days=30))
    other = _prediction(None, version, {"Effusion": 0.12}, source="pacs", created_at=now - timedelta(days=10))
    later = _prediction(None, version, {"Effusion": 0.3}, source="pacs", created_at=now + timedelta(days=1))
    current = _prediction(None, version, {"Effusion": 0.91}, source="pacs", created_at=now)
    for row in (older, old, later, current):
        _received(row, patient_key="k" * 64)
    _received(other, patient_key="z" * 64)
    client.force_login(auditor)
    html = client.get(_url(current)).content.decode()
    priors = html.split('id="priors"')[1].split("</section>")[0]
    assert f'href="/predictions/{old.pk}/"' in priors and f'href="/predictions/{older.pk}/"' in priors
    assert f"/predictions/{other.pk}/" not in priors and f"/predictions/{later.pk}/" not in priors
    effusion = priors.split('<th scope="row">Effusion</th>')[1].split("</tr>")[0]
    assert re.findall(r'<td class="mono[^"]*">([^ <]+)', effusion) == ["91", "71", "55"]
    # A clinician sees only their own rows: PACS rows have no user, so no priors (nor the page).
    assert 'id="priors"' not in client.get(_url(older)).content.decode()


def test_it_shows_no_earlier_results_without_a_patient_key(client, auditor):
    version = _version()
    first = _prediction(None, version, source="pacs")
    second = _prediction(None, version, source="pacs")
    _received(first, patient_key="")
    _received(second, patient_key="")
    client.force_login(auditor)
    assert 'id="priors"' not in client.get(_url(second)).content.decode()


# ------------------------------------------------------------------------------------------------
# The gray levels for window/level


def _stored(clinician, pixels: np.ndarray) -> Prediction:
    from audit.services import image_store

    stored = image_store(data=b"", image=pixels)
    version = ModelVersion.objects.filter(version_name="stored").first() or _version("stored", active=False)
    return _prediction(clinician, version, image_url=stored.name)


def test_it_serves_the_16_bit_levels_as_stored(client, clinician):
    rng = np.random.default_rng(7)
    image = rng.random((300, 200), dtype=np.float32)  # a 16-bit stored copy
    prediction = _stored(clinician, image)
    client.force_login(clinician)
    response = client.get(reverse("prediction-pixels", args=[prediction.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "application/octet-stream"
    assert (response["X-Image-Width"], response["X-Image-Height"], response["X-Image-Max"]) == (
        "200",
        "300",
        "65535",
    )
    levels = np.frombuffer(response.content, dtype="<u2").reshape(300, 200)
    np.testing.assert_array_equal(levels, np.round(image * 65535).astype(np.uint16))
    assert "private" in response["Cache-Control"]


def test_it_serves_an_8_bit_image_on_0_to_255_and_a_large_one_at_most_2048_wide(client, clinician):
    small = np.arange(60 * 40, dtype=np.uint32).reshape(60, 40) % 256
    prediction = _stored(clinician, small.astype(np.uint8))
    client.force_login(clinician)
    response = client.get(reverse("prediction-pixels", args=[prediction.pk]))
    assert response["X-Image-Max"] == "255"
    np.testing.assert_array_equal(np.frombuffer(response.content, dtype="<u2").reshape(60, 40), small)

    big = np.linspace(0, 1, 3000 * 2500, dtype=np.float32).reshape(2500, 3000)
    prediction = _stored(clinician, big)
    response = client.get(reverse("prediction-pixels", args=[prediction.pk]))
    width, height = int(response["X-Image-Width"]), int(response["X-Image-Height"])
    assert (width, height) == (2048, 1707)
    levels = np.frombuffer(response.content, dtype="<u2").reshape(height, width)
    # Area averages of a ramp: still a ramp over the whole 16-bit range.
    assert levels[0, 0] < 100 and levels[-1, -1] > 65400 and np.all(np.diff(levels[:, 1000].astype(int)) >= 0)


def test_it_answers_503_when_the_stored_image_is_gone(client, clinician):
    prediction = _prediction(clinician, _version(), image_url="images/missing.png")
    client.force_login(clinician)
    assert client.get(reverse("prediction-pixels", args=[prediction.pk])).status_code == 503
