"""GET /api/v1/predictions/<id>/fhir: the prediction as a FHIR R4 Bundle, parsed back and validated
by `fhir.resources` (its R4B models, whose Bundle, DiagnosticReport, Observation and Device have the
R4 structure), with the same visibility as the prediction itself."""

from __future__ import annotations

import json

import pytest
from fhir.resources.R4B.bundle import Bundle

from pacs import coding
from pacs.models import ReceivedInstance
from pacs.services import instance_receive
from tests.conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def prediction(db, starter_model, settings):
    settings.LUNGSITE_DICOMWEB_URL = ""
    data = shared_data_path("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm").read_bytes()
    received = instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_CSTORE)
    return received.prediction


def test_it_serves_a_prediction_as_a_valid_fhir_r4_bundle(api, auditor, prediction):
    response = api(auditor).get(f"/api/v1/predictions/{prediction.pk}/fhir")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/fhir+json")
    body = json.loads(response.content)
    bundle = Bundle.model_validate(body)  # raises on anything R4(B) does not allow
    assert bundle.type == "collection"
    resources = [entry.resource for entry in bundle.entry]
    kinds = [resource.get_resource_type() for resource in resources]
    findings = prediction.results_json["findings"]
    assert kinds == ["DiagnosticReport"] + ["Observation"] * len(findings) + ["Device"]

    report, observations, device = resources[0], resources[1:-1], resources[-1]
    assert report.status == "preliminary" and len(report.result) == len(findings)
    assert [ref.reference for ref in report.result] == [entry.fullUrl for entry in bundle.entry[1:-1]]
    assert report.conclusion.upper().startswith("UNTRAINED")
    study = prediction.received_instance.study_instance_uid
    assert report.imagingStudy[0].identifier.value == f"urn:oid:{study}"
    recorded = prediction.recorded_model
    assert {v.value for v in device.version} == {recorded["version_name"], recorded["sha256"]}

    for observation, finding in zip(observations, findings, strict=True):
        assert observation.code.text == finding["name"]
        code = coding.finding_code(finding["name"])
        if code is not None:
            assert (observation.code.coding[0].system, observation.code.coding[0].code) == (
                coding.SNOMED_URI,
                code.code,
            )
        else:
            assert observation.code.coding[0].system == coding.FHIR_LOCAL_SYSTEM
        assert float(observation.valueQuantity.value) == pytest.approx(finding["probability"], abs=1e-6)
        assert observation.valueQuantity.code == "1"
        assert float(observation.referenceRange[0].high.value) == pytest.approx(finding["threshold"])
        assert observation.interpretation[0].coding[0].code == ("POS" if finding["positive"] else "NEG")
        assert observation.device.reference == bundle.entry[-1].fullUrl
        assert "UNTRAINED" in observation.note[0].text


def test_it_shows_the_fhir_of_a_prediction_only_to_those_who_may_see_it(api, clinician, prediction):
    assert api().get(f"/api/v1/predictions/{prediction.pk}/fhir").status_code == 401
    assert api(clinician).get(f"/api/v1/predictions/{prediction.pk}/fhir").status_code == 404
