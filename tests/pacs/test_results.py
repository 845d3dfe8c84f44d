"""The result objects built from the audit row (no PACS needed), read back as a consumer would: the
TID 1500 report through highdicom's MeasurementReport, the parametric map's float values and its
real world value mapping, the secondary capture's picture and statement; the honesty statement;
and a result that cannot be built failing after its attempts."""

from __future__ import annotations

import io
import json

import highdicom as hd
import numpy as np
import pydicom
import pytest
from highdicom.sr import ValueTypeValues
from highdicom.sr.utils import find_content_items
from pydicom.sr.codedict import codes

from pacs import coding
from pacs.header import inherited_header
from pacs.honesty import honesty_statement
from pacs.models import ReceivedInstance, ResultObject
from pacs.parametric_map import heat_values
from pacs.results import result_dataset_bytes
from pacs.services import instance_receive
from tests.conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")
SMALL_CHEST = ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm")


@pytest.fixture
def analysed(db, starter_model, settings):
    settings.LUNGSITE_DICOMWEB_URL = ""
    data = shared_data_path(*SMALL_CHEST).read_bytes()
    received = instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_CSTORE)
    assert received.state == ReceivedInstance.DONE
    return received, pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)


def _built(result: ResultObject, header: pydicom.Dataset) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(result_dataset_bytes(result=result, header=header)))


def test_it_builds_a_tid_1500_report_that_highdicom_reads_finding_by_finding(analysed):
    received, header = analysed
    result = received.results.get(kind=ResultObject.KIND_SR)
    sr = _built(result, header)
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.34"  # Comprehensive 3D SR
    assert sr.StudyInstanceUID == header.StudyInstanceUID and sr.SOPInstanceUID == result.sop_instance_uid
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"

    report = hd.sr.MeasurementReport.from_sequence([sr])
    (observer,) = report.get_observer_contexts(observer_type=codes.DCM.Device)
    attributes = observer.observer_identifying_attributes
    recorded = received.prediction.recorded_model
    assert attributes.name == "lungsite"
    assert (
        attributes.model_name == recorded["version_name"] and attributes.serial_number == recorded["sha256"]
    )

    groups = report.get_image_measurement_groups()
    findings = received.prediction.results_json["findings"]
    assert len(groups) == len(findings) == 13
    uids = set()
    for group, finding in zip(groups, findings, strict=True):
        assert group.tracking_identifier == finding["name"]
        uids.add(group.tracking_uid)
        concept = coding.finding_concept(finding["name"])
        assert group.finding_type == concept
        (probability,) = group.get_measurements(name=coding.PROBABILITY)
        assert probability.value == pytest.approx(finding["probability"], abs=1e-6)
        assert probability.unit == coding.NO_UNITS
        (threshold,) = group.get_measurements(name=coding.THRESHOLD)
        assert threshold.value == pytest.approx(finding["threshold"])
        (evaluation,) = group.get_qualitative_evaluations(name=concept)
        assert evaluation.value == (coding.PRESENT if finding["positive"] else coding.ABSENT)
        algorithm = {
            item.name.meaning: item.value
            for item in find_content_items(group[0], value_type=ValueTypeValues.TEXT)
        }
        assert algorithm["Algorithm Name"] == recorded["version_name"]
        assert algorithm["Algorithm Version"] == recorded["sha256"]
        (source,) = group.source_images
        assert source.referenced_sop_instance_uid == header.SOPInstanceUID
    assert len(uids) == 13

    # Codes: SNOMED CT for the reviewed names, the declared local scheme for the rest.
    schemes = {group.finding_type.scheme_designator for group in groups}
    assert schemes == {"SCT", coding.LOCAL_SCHEME}  # Pleural_Thickening has no reviewed code
    declared = {item.CodingSchemeDesignator for item in sr.CodingSchemeIdentificationSequence}
    assert coding.LOCAL_SCHEME in declared
    texts = [
        item.TextValue
        for container in sr.ContentSequence
        if container.ValueType == "CONTAINER"
        for item in getattr(container, "ContentSequence", [])
        if item.ValueType == "TEXT"
    ]
    assert texts == [honesty_statement(received.prediction)]
    assert texts[0].upper().startswith("UNTRAINED")


def test_it_codes_every_reviewed_finding_as_its_source_says():
    from pydicom.sr._concepts_dict import concepts

    dicom_sct = {
        code: meaning for values in concepts["SCT"].values() for code, (meaning, _) in values.items()
    }
    for name, code in coding.FINDINGS.items():
        assert code.code.isdigit() and code.source, name
        if code.source.startswith("DICOM PS3.16"):
            # Listed by DICOM: the code exists there with the same meaning.
            assert dicom_sct[code.code].lower().startswith(code.meaning.lower()), name
    assert coding.finding_concept("Cardiomegaly") == hd.sr.CodedConcept("8186001", "SCT", "Cardiomegaly")
    local = coding.finding_concept("Pleural_Thickening")
    assert local.scheme_designator == coding.LOCAL_SCHEME and local.meaning == "Pleural_Thickening"


def test_it_builds_a_parametric_map_of_each_positive_finding_on_the_source_grid(analysed):
    received, header = analysed
    maps = list(received.results.filter(kind=ResultObject.KIND_PM))
    positives = [f["name"] for f in received.prediction.results_json["findings"] if f["positive"]]
    assert sorted(r.finding for r in maps) == sorted(positives) and maps
    result = maps[0]
    pm = _built(result, header)
    assert pm.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
    assert (pm.Rows, pm.Columns) == (header.Rows, header.Columns)
    values = pm.pixel_array.astype(np.float32)
    expected = heat_values(received.prediction.heatmap_maps(), result.finding, (header.Columns, header.Rows))
    np.testing.assert_allclose(values, expected, atol=1e-6)
    assert values.min() >= 0.0 and values.max() <= 1.0 and values.std() > 0
    frame = pm.PerFrameFunctionalGroupsSequence[0]
    groups = frame if "RealWorldValueMappingSequence" in frame else pm.SharedFunctionalGroupsSequence[0]
    (mapping,) = groups.RealWorldValueMappingSequence
    assert mapping.LUTLabel == "GRADCAM" and mapping.RealWorldValueSlope == 1.0
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    (derivation,) = (frame if "DerivationImageSequence" in frame else groups).DerivationImageSequence
    assert derivation.SourceImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    assert "UNTRAINED" in pm.ImageComments


def test_it_builds_a_secondary_capture_with_the_xray_under_the_heat_and_the_whole_statement(analysed):
    received, header = analysed
    result = received.results.filter(kind=ResultObject.KIND_SC).first()
    sc = _built(result, header)
    statement = honesty_statement(received.prediction)
    assert sc.ImageComments == f"Heatmap of {result.finding}. {statement}"
    assert statement.upper().startswith("UNTRAINED") and len(statement) > 90  # longer than the old cut
    assert (
        "Laterality" in sc and sc.ReferencedImageSequence[0].ReferencedSOPInstanceUID == header.SOPInstanceUID
    )
    pixels = sc.pixel_array
    assert pixels.ndim == 3 and pixels.shape[2] == 3
    # The band of text on top, then the X-ray: where the heat layer is transparent, the picture is
    # the gray X-ray itself (R = G = B), with its own contrast.
    body = pixels[-header.Rows :]
    gray = (body[..., 0] == body[..., 1]) & (body[..., 1] == body[..., 2])
    assert gray.mean() > 0.2 and body[gray].std() > 10
    assert pixels.shape[0] > header.Rows  # room for the statement


def test_it_repairs_or_leaves_out_inherited_values_invalid_for_their_vr():
    header = pydicom.Dataset()
    header.PatientName = "Doe^Jane"
    header.PatientAge = "62"
    header.PatientBirthDate = "20230231"  # February 31st
    header.PatientID = "ID42\x00"
    header.StudyDate = "1995.07.20"
    header.InstanceCreationDate = "19950720"
    clean = inherited_header(header)
    assert str(clean.PatientName) == "Doe^Jane" and clean.PatientID == "ID42"
    assert "PatientAge" not in clean
    assert clean.PatientBirthDate == "" and clean.StudyDate == ""  # type 2: present, empty
    assert clean.InstanceCreationDate == "19950720"


def test_it_fails_a_result_that_cannot_be_built_after_its_attempts(
    analysed, settings, monkeypatch, client, auditor
):
    from django.utils import timezone

    from pacs import dicomweb, services

    received, header = analysed
    settings.LUNGSITE_DICOMWEB_URL = "http://pacs.invalid/dicom-web"
    settings.LUNGSITE_PACS_BUILD_ATTEMPTS = 3
    broken = pydicom.Dataset()
    broken.update(header)
    del broken.SOPClassUID  # no builder can reference an image without its class
    monkeypatch.setattr(dicomweb, "instance_header", lambda **kwargs: broken)
    result = received.results.get(kind=ResultObject.KIND_SR)
    for _ in range(2):
        ResultObject.objects.filter(pk=result.pk).update(next_try_at=timezone.now())
        result = services.result_deliver(result_id=result.pk)
    assert result.state == ResultObject.FAILED and result.attempts == 3
    assert "cannot be built" in result.last_error and "tried 3 times" in result.last_error
    client.force_login(auditor)
    page = client.get("/worklist/").content.decode()
    assert "delivery failed" in page and "cannot be built" in page


def test_it_says_what_the_result_recorded_about_its_version(analysed):
    from registry.models import NOT_EVALUATED_WARNING, Evaluation

    received, _ = analysed
    prediction = received.prediction
    # In memory only (the row is append-only): the honesty a trained version's result would record.
    prediction.results_json["untrained"] = False
    prediction.results_json["honesty"] = {"state": "not_evaluated", "statement": NOT_EVALUATED_WARNING}
    assert honesty_statement(prediction).startswith("NOT EVALUATED")
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
    assert "mean AUROC 0.812 (95 % CI 0.770-0.850) on held-out set" in honesty_statement(prediction)
    prediction.model.untrained = False
    chance = Evaluation(evaluation_set="s", mean_auroc=0.55, mean_auroc_low=0.45, mean_auroc_high=0.65)
    prediction.results_json["honesty"] = prediction.model.honesty(evaluation=chance)
    assert honesty_statement(prediction).startswith("NOT VALIDATED")


def test_it_retries_due_results_from_the_command_and_keeps_them_pending(analysed):
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
