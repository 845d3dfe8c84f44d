import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.test import Client

from audit.models import FindingLabel, Prediction
from learning import shadow
from learning.models import ShadowPrediction
from registry.models import DEFAULT_CLASS_NAMES
from registry.services import model_version_register
from tests.conftest import shared_data_path
from tests.registry.conftest import variant_weights_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

IMAGES = ["00000075_000.png", "00000211_000.png"]


def _upload(client, name):
    path = shared_data_path("nih_reproduce_chexnet", "images", name)
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    return client.post("/api/v1/predictions/", {"image": upload}, format="multipart")


def _wait_for_shadow():
    shadow._executor().submit(lambda: None).result(timeout=300)  # one thread: runs after the queued ones


@pytest.mark.django_db(transaction=True)
def test_it_scores_live_predictions_off_the_record_and_compares(
    api, clinician, starter_model, model_admin, settings
):
    settings.LUNGSITE_SHADOW_RATE = 1.0
    candidate = model_version_register(
        data=variant_weights_bytes(11), version_name="shadow-candidate", class_names=DEFAULT_CLASS_NAMES
    )
    shadow.shadow_version_set(version=candidate)
    client = api(clinician)
    bodies = []
    for name in IMAGES:
        response = _upload(client, name)
        assert response.status_code == 201, response.content
        bodies.append(response.json())
    _wait_for_shadow()

    rows = ShadowPrediction.objects.filter(version=candidate).order_by("prediction_id")
    assert [r.prediction_id for r in rows] == [b["id"] for b in bodies]
    for row, body in zip(rows, bodies, strict=True):
        assert set(row.probabilities) == set(DEFAULT_CLASS_NAMES)
        live = {f["name"]: f["score"] for f in body["findings"]}
        # Different weights give different scores; the live response and audit row never name the shadow.
        assert any(abs(row.probabilities[n] - live[n]) > 1e-4 for n in live)
        assert body["model"]["version_name"] == starter_model.version_name
        assert "shadow" not in str(Prediction.objects.get(pk=body["id"]).results_json)

    first, second = (Prediction.objects.get(pk=b["id"]) for b in bodies)
    FindingLabel.objects.create(prediction=first, finding="Edema", value="present", user=clinician)
    FindingLabel.objects.create(prediction=second, finding="Edema", value="absent", user=clinician)
    # One positive and one negative: by default too few to measure anything.
    edema = next(f for f in shadow.shadow_comparison(version=candidate)["findings"] if f["name"] == "Edema")
    assert edema["live_auroc"] is None and edema["evaluable"] is False
    settings.LUNGSITE_EVAL_MIN_POSITIVES = 1
    comparison = shadow.shadow_comparison(version=candidate)
    edema = next(f for f in comparison["findings"] if f["name"] == "Edema")
    assert comparison["n_predictions"] == 2
    assert edema["compared"] == 2 and edema["agreement"] in (0.0, 0.5, 1.0)
    assert (edema["positives"], edema["negatives"]) == (1, 1)
    live_edema = [b["findings"][DEFAULT_CLASS_NAMES.index("Edema")]["score"] for b in bodies]
    assert edema["live_auroc"] == (
        1.0 if live_edema[0] > live_edema[1] else 0.0 if live_edema[0] < live_edema[1] else 0.5
    )
    shadow_edema = [r.probabilities["Edema"] for r in rows]
    assert edema["shadow_auroc"] == (1.0 if shadow_edema[0] > shadow_edema[1] else 0.0)

    assert edema["agreement_ci"][0] <= edema["agreement"] <= edema["agreement_ci"][1]
    assert comparison["latency"]["shadow"]["n"] == 2 and comparison["latency"]["shadow"]["median_ms"] > 0

    page = Client()
    page.force_login(model_admin)
    response = page.get("/admin/registry/modelversion/shadow/")
    assert response.status_code == 200
    assert b"shadow-candidate" in response.content and b"Edema" in response.content

    # The same comparison as JSON, for model-admins only.
    assert api(clinician).get("/api/v1/models/shadow/").status_code == 403
    body = api(model_admin).get("/api/v1/models/shadow/").json()
    assert body["shadow"] == {"id": candidate.pk, "version_name": "shadow-candidate"}
    assert body["n_predictions"] == 2 and body["latency"]["live"]["n"] == 2
    by_name = {f["name"]: f for f in body["findings"]}
    assert by_name["Edema"]["compared"] == 2 and by_name["Edema"]["agreement"] == edema["agreement"]
    assert set(by_name["Edema"]) >= {"kappa", "kappa_ci", "live_auroc_ci", "shadow_auroc_ci", "evaluable"}


@pytest.mark.django_db
def test_it_skips_when_the_rate_is_zero_and_refuses_the_active_version(starter_model, settings):
    settings.LUNGSITE_SHADOW_RATE = 0.0
    with pytest.raises(shadow.ShadowError, match="active version"):
        shadow.shadow_version_set(version=starter_model)
    candidate = model_version_register(
        data=variant_weights_bytes(12), version_name="shadow-two", class_names=DEFAULT_CLASS_NAMES
    )
    shadow.shadow_version_set(version=candidate)
    prediction = Prediction(pk=1, model_id=starter_model.pk)
    assert shadow.shadow_submit(prediction=prediction, image=np.zeros((64, 64), np.uint8)) is None
    assert shadow.shadow_version_get() == candidate
    shadow.shadow_version_set(version=None)
    assert shadow.shadow_version_get() is None


@pytest.mark.django_db
def test_the_shadow_api_says_when_there_is_none(api, model_admin):
    body = api(model_admin).get("/api/v1/models/shadow/").json()
    assert (body["shadow"], body["n_predictions"], body["findings"]) == (None, 0, [])
