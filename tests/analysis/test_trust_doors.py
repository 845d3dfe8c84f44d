"""What a radiologist is told, whichever door a case comes through: a chance-level version says
NOT VALIDATED on the page, in the API, in the job's JSON and CSV, and in the PACS's SR and
secondary captures; each result keeps the evaluation that was in force when it was made; an image
far from what the version was evaluated on is marked (or refused, with LUNGSITE_OOD_REFUSE); a
calibrated finding is a probability, an uncalibrated one a score; the input's kind is recorded and
the drift page and JSON count it."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from PIL import Image

from audit.models import Prediction
from jobs.models import JobImage
from learning.evaluation_services import model_version_calibration_store, model_version_evaluation_record
from learning.labels import LabelTable, MappingReport
from registry.models import DEFAULT_CLASS_NAMES, DEFAULT_PREPROCESSING, Evaluation
from registry.services import model_version_activate, model_version_register
from tests.conftest import shared_data_path
from tests.registry.conftest import variant_weights_bytes

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")
CHEST_DCM = ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm")
SMALL = {**DEFAULT_PREPROCESSING, "input_size": 64}  # fast forward passes; the same code paths


class _Image:
    def __init__(self, name):
        self.name = name


def _synthetic_table(n=200, seed=0) -> LabelTable:
    rng = np.random.default_rng(seed)
    return LabelTable(
        paths=[_Image(f"{i}.png") for i in range(n)],
        labels=(rng.random((n, len(DEFAULT_CLASS_NAMES))) < 0.3).astype(float),
        class_names=list(DEFAULT_CLASS_NAMES),
        patients=[str(i) for i in range(n)],
        report=MappingReport(label_format="onehot", uncertain="ignore"),
        source="synthetic",
    )


def _record(version, signal: float, seed: int) -> Evaluation:
    table = _synthetic_table(seed=seed)
    noise = np.random.default_rng(seed + 1).normal(size=table.labels.shape)
    scores = 1 / (1 + np.exp(-(noise + signal * table.labels)))
    return model_version_evaluation_record(
        version=version, table=table, scores=scores, evaluation_set=f"synthetic {seed}"
    )


@pytest.fixture
def chance_version(db, starter_model):
    version = model_version_register(
        data=variant_weights_bytes(31),
        version_name="chance-v1",
        class_names=DEFAULT_CLASS_NAMES,
        preprocessing=SMALL,
    )
    evaluation = _record(version, 0.0, seed=1)
    assert evaluation.mean_auroc_low <= 0.5
    model_version_activate(version=version, via="api", override_reason="test")
    version.refresh_from_db()
    return version, evaluation


def _sr_and_sc_statements(received) -> list[str]:
    from pacs.models import ResultObject
    from pacs.results import result_dataset_bytes

    header = pydicom.dcmread(shared_data_path(*CHEST_DCM), force=True, stop_before_pixels=True)
    statements = []
    for result in received.results.all():
        dataset = pydicom.dcmread(io.BytesIO(result_dataset_bytes(result=result, header=header)))
        if result.kind == ResultObject.KIND_SR:
            statements += [  # the report's text items: its honesty statement
                item.TextValue
                for container in dataset.ContentSequence
                if container.ValueType == "CONTAINER"
                for item in getattr(container, "ContentSequence", [])
                if item.ValueType == "TEXT"
            ]
        else:
            statements.append(str(dataset.ImageComments))
    return statements


@pytest.mark.parametrize("door", ["page", "api", "job", "pacs"])
def test_a_chance_level_version_says_not_validated_at_every_door(
    door, chance_version, client, api, clinician, settings, eager_jobs
):
    version, evaluation = chance_version
    data = shared_data_path(*(CHEST_DCM if door == "pacs" else NIH_PNG)).read_bytes()
    if door == "page":
        client.force_login(clinician)
        response = client.post(
            "/", {"image": SimpleUploadedFile("x.png", data)}, HTTP_X_REQUESTED_WITH="XMLHttpRequest"
        )
        assert response.status_code == 201
        page = client.get(f"/predictions/{Prediction.objects.get().pk}/").content.decode()
        assert "NOT VALIDATED model" in page and "includes 0.5 (chance)" in page
    elif door == "api":
        body = (
            api(clinician)
            .post("/api/v1/predictions/", {"image": SimpleUploadedFile("x.png", data)}, format="multipart")
            .json()
        )
        assert body["warning"].startswith("NOT VALIDATED model")
        assert (
            body["honesty"]["state"] == "not_validated" and body["honesty"]["evaluation_id"] == evaluation.pk
        )
        for finding in body["findings"]:  # uncalibrated: scores, not probabilities
            assert finding["probability"] is None and finding["calibrated"] is False
            assert 0.0 <= finding["score"] <= 1.0 and finding["positive"] == (
                finding["score"] >= finding["threshold"]
            )
    elif door == "job":
        with eager_jobs():
            created = api(clinician).post(
                "/api/v1/jobs/", {"images": [SimpleUploadedFile("x.png", data)]}, format="multipart"
            )
        job_id = created.json()["id"]
        job = api(clinician).get(f"/api/v1/jobs/{job_id}/").json()
        assert job["warning"].startswith("NOT VALIDATED model")
        assert JobImage.objects.get().state == JobImage.STATE_DONE
        response = api(clinician).get(f"/api/v1/jobs/{job_id}/results.csv")
        content = b"".join(response.streaming_content) if response.streaming else response.content
        rows = list(csv.DictReader(io.StringIO(content.decode())))
        assert rows[0]["warning"].startswith("NOT VALIDATED model")
    else:
        from pacs.models import ReceivedInstance
        from pacs.services import instance_receive

        settings.LUNGSITE_DICOMWEB_URL = ""
        received = instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_CSTORE)
        assert received.state == ReceivedInstance.DONE
        statements = _sr_and_sc_statements(received)
        assert len(statements) > 1 and all("NOT VALIDATED model" in s for s in statements)
    prediction = Prediction.objects.get()
    assert prediction.honesty["state"] == "not_validated"
    assert prediction.honesty["evaluation_id"] == evaluation.pk


def test_a_later_evaluation_never_changes_what_an_earlier_result_says(chance_version, api, clinician):
    version, chance = chance_version
    data = shared_data_path(*NIH_PNG).read_bytes()
    client = api(clinician)
    first = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("a.png", data)}, format="multipart"
    )
    good = _record(version, 3.0, seed=2)
    assert version.honesty()["state"] == "evaluated"
    second = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("b.png", data)}, format="multipart"
    )
    assert second.json()["warning"] is None and second.json()["honesty"]["evaluation_id"] == good.pk
    again = client.get(f"/api/v1/predictions/{first.json()['id']}/").json()
    assert again["warning"].startswith("NOT VALIDATED") and again["honesty"]["evaluation_id"] == chance.pk


def test_a_calibrated_finding_is_a_probability_and_the_input_kind_is_recorded(chance_version, api, clinician):
    from learning.calibration import calibration_fit

    version, _ = chance_version
    table = _synthetic_table(n=300, seed=5)
    raw = 1 / (1 + np.exp(-(np.random.default_rng(6).normal(size=table.labels.shape) + 2 * table.labels)))
    table.labels[:, DEFAULT_CLASS_NAMES.index("Mass")] = 0.0  # no positives: stays a score
    model_version_calibration_store(
        version=version,
        calibration=calibration_fit(table.labels, raw, DEFAULT_CLASS_NAMES),
        fitted_on="synthetic",
    )
    data = shared_data_path(*CHEST_DCM).read_bytes()
    body = (
        api(clinician)
        .post("/api/v1/predictions/", {"image": SimpleUploadedFile("c.dcm", data)}, format="multipart")
        .json()
    )
    findings = {f["name"]: f for f in body["findings"]}
    assert (
        findings["Edema"]["calibrated"] is True
        and findings["Edema"]["probability"] == findings["Edema"]["score"]
    )
    assert findings["Mass"]["calibrated"] is False and findings["Mass"]["probability"] is None
    results = Prediction.objects.get().results_json
    assert results["calibration"]["calibrated"] is True and results["calibration"]["method"] == "platt"
    assert results["input"] == {
        "format": "DICOM",
        "modality": "CR",
        "manufacturer": results["input"]["manufacturer"],
        "rows": 440,
        "cols": 440,
        "bits": 16,
    }


def _png_of_dicom(parts) -> bytes:
    """A non-chest DICOM's picture saved as a PNG: the header checks cannot see what it shows."""
    from engine.decode import decode_gray

    pixels = decode_gray(shared_data_path(*parts).read_bytes(), parts[-1])
    if pixels.dtype != np.uint8:
        pixels = (pixels * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_image_outside_what_the_version_was_evaluated_on_is_marked_or_refused(
    db, starter_model, shared_data, api, clinician, settings, eager_jobs
):
    version = model_version_register(
        data=variant_weights_bytes(32),
        version_name="ood-v1",
        class_names=DEFAULT_CLASS_NAMES,
        preprocessing=SMALL,
    )
    out = io.StringIO()
    call_command(
        "evaluate_model",
        version.version_name,
        "--labels",
        str(shared_data / "nih_labels.csv"),
        "--images",
        str(shared_data),
        "--limit",
        "40",
        stdout=out,
    )
    result = json.loads(out.getvalue())
    assert result["ood"]["reference_images"] == 40 and result["ood"]["threshold"] > 0
    model_version_activate(version=version, via="api", override_reason="test")
    client = api(clinician)
    abdomen = _png_of_dicom(("nhsx_nccid", "sample_non_chest_OT.dcm"))
    chest = shared_data_path("torchxrayvision_tests", "00000001_000.png").read_bytes()  # not in the 40

    marked = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("abdomen.png", abdomen)}, format="multipart"
    )
    assert marked.status_code == 201, marked.content
    body = marked.json()
    assert body["ood"]["outside"] is True and body["ood"]["distance"] > body["ood"]["threshold"]
    assert (
        body["honesty"]["outside"] is True and "OUTSIDE WHAT THIS VERSION WAS EVALUATED ON" in body["warning"]
    )
    inside = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("chest.png", chest)}, format="multipart"
    )
    assert inside.json()["ood"]["outside"] is False and "OUTSIDE" not in (inside.json()["warning"] or "")

    settings.LUNGSITE_OOD_REFUSE = True
    rows = Prediction.objects.count()
    refused = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("abdomen.png", abdomen)}, format="multipart"
    )
    assert refused.status_code == 422 and refused.json()["error"]["code"] == "outside_evaluation"
    with eager_jobs():
        client.post(
            "/api/v1/jobs/", {"images": [SimpleUploadedFile("abdomen.png", abdomen)]}, format="multipart"
        )
    image = JobImage.objects.get()
    assert image.code == "outside_evaluation" and image.prediction_id is None
    assert Prediction.objects.count() == rows


def test_the_drift_page_and_json_count_what_was_seen(chance_version, api, clinician, model_admin, client):
    version, evaluation = chance_version
    for parts in (NIH_PNG, CHEST_DCM):
        response = api(clinician).post(
            "/api/v1/predictions/",
            {"image": SimpleUploadedFile(parts[-1], shared_data_path(*parts).read_bytes())},
            format="multipart",
        )
        assert response.status_code == 201
    assert api(clinician).get("/api/v1/drift/").status_code == 403
    for bad in ("weeks=0", "weeks=null", "version=-1", "version=x"):
        refused = api(model_admin).get(f"/api/v1/drift/?{bad}")
        assert refused.status_code == 400, bad
        assert refused.json()["error"]["code"] == "invalid"
    report = api(model_admin).get("/api/v1/drift/?weeks=4").json()
    entry = next(v for v in report["versions"] if v["id"] == version.pk)
    assert entry["reference"]["evaluation"]["id"] == evaluation.pk
    week = entry["weeks"][-1]
    assert week["n"] == 2 and week["low_volume"] is True and week["alert"] is False
    assert week["input_mix"]["format"] == {"PNG": 1, "DICOM CR": 1}
    edema = week["findings"]["Edema"]
    assert edema["psi"] is not None and len(edema["histogram"]["reference"]) == len(
        edema["histogram"]["week"]
    )
    assert abs(sum(edema["histogram"]["reference"]) - 1) < 1e-3
    client.force_login(model_admin)
    page = client.get("/models/drift/")
    assert page.status_code == 200 and b"chance-v1" in page.content
    picture = client.get(f"/models/drift/{version.pk}.png")
    assert picture["Content-Type"] == "image/png" and picture.content[:8] == b"\x89PNG\r\n\x1a\n"
    client.force_login(clinician)
    assert client.get("/models/drift/").status_code == 403
