"""The result objects built from the audit row (no PACS needed): the SR's numbers and model
identification, the statement for untrained and not-evaluated versions, the heatmap SC."""

from __future__ import annotations

import io

import pydicom
import pytest

from pacs.models import ReceivedInstance, ResultObject
from pacs.results import model_statement, result_dataset_bytes
from pacs.services import instance_receive
from tests.conftest import shared_data_path
from tests.pacs.test_orthanc_round_trip import _sr_findings, _sr_texts

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def analysed(db, starter_model, settings):
    settings.LUNGSITE_DICOMWEB_URL = ""
    data = shared_data_path("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm").read_bytes()
    received = instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_CSTORE)
    assert received.state == ReceivedInstance.DONE
    return received, pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)


def test_it_builds_the_sr_from_the_audit_row_in_the_source_study(analysed):
    received, header = analysed
    result = received.results.get(kind=ResultObject.KIND_SR)
    sr = pydicom.dcmread(io.BytesIO(result_dataset_bytes(result=result, header=header)))
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.SOPInstanceUID == result.sop_instance_uid
    assert sr.PatientName == header.PatientName
    findings = _sr_findings(sr)
    assert len(findings) == 13
    for finding in received.prediction.results_json["findings"]:
        assert findings[finding["name"]]["Probability"] == pytest.approx(finding["probability"], abs=1e-6)
        assert findings[finding["name"]]["Positive at threshold"] == ("Yes" if finding["positive"] else "No")
    texts = _sr_texts(sr)
    assert texts["Algorithm Version"] == received.prediction.model.sha256
    assert texts["Model statement"].startswith("UNTRAINED MODEL")


def test_it_builds_a_heatmap_secondary_capture_per_positive_finding(analysed):
    received, header = analysed
    for result in received.results.filter(kind=ResultObject.KIND_SC):
        sc = pydicom.dcmread(io.BytesIO(result_dataset_bytes(result=result, header=header)))
        assert sc.StudyInstanceUID == header.StudyInstanceUID
        assert sc.pixel_array.shape[2] == 3 and result.finding in sc.ImageComments


def test_it_says_what_the_result_recorded_about_its_version(analysed):
    from registry.models import NOT_EVALUATED_WARNING, Evaluation

    received, _ = analysed
    prediction = received.prediction
    # In memory only (the row is append-only): the honesty a trained version's result would record.
    prediction.results_json["untrained"] = False
    prediction.results_json["honesty"] = {"state": "not_evaluated", "statement": NOT_EVALUATED_WARNING}
    assert model_statement(prediction).startswith("NOT EVALUATED")
    evaluation = Evaluation.objects.create(
        version=prediction.model,
        evaluation_set="held-out set",
        set_sha256="0" * 64,
        n_images=200,
        per_class={},
        mean_auroc=0.8123,
        mean_auroc_low=0.77,
        mean_auroc_high=0.85,
    )
    prediction.results_json["honesty"] = {
        "state": "evaluated",
        "statement": None,
        "evaluation_id": evaluation.pk,
    }
    assert "mean AUROC 0.812 (95 % CI 0.770-0.850) on held-out set" in model_statement(prediction)
    prediction.model.untrained = False
    chance = Evaluation(evaluation_set="s", mean_auroc=0.55, mean_auroc_low=0.45, mean_auroc_high=0.65)
    prediction.results_json["honesty"] = prediction.model.honesty(evaluation=chance)
    assert model_statement(prediction).startswith("NOT VALIDATED")


def test_it_retries_due_results_from_the_command_and_keeps_them_pending(analysed):
    import json

    from django.core.management import call_command
    from django.utils import timezone

    received, _ = analysed
    count = received.results.count()
    received.results.update(next_try_at=timezone.now())
    out = io.StringIO()
    call_command("pacs_deliver", stdout=out)
    counts = json.loads(out.getvalue())
    assert counts["pending"] == count and counts["sent"] == 0 and counts["pending_total"] == count
    assert set(received.results.values_list("attempts", flat=True)) == {2}
