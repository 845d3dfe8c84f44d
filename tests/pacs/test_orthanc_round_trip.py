"""Orthanc, a real PACS, sends a real chest radiograph to a live lungsite by C-STORE and by
STOW-RS; lungsite analyses it and sends a structured report and heatmap secondary captures back,
which the test reads from Orthanc (QIDO-RS, WADO-RS) and compares with the audit row. Then: no
patient data in lungsite's database or storage, and results kept and delivered while Orthanc is
down and after it is back."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import logging
import os
import time
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from django.core.files.storage import storages
from django.db import connection

from pacs import coding
from tests.pacs.orthanc import PASSWORD, USER, Orthanc

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture
def orthanc(tmp_path, live_server, dicom_listener, pacs_user, settings):
    settings.LUNGSITE_PACS_RETRY_SECONDS = 1
    pacs = Orthanc(
        tmp_path / "orthanc",
        lungsite_dicom_port=dicom_listener[1],
        lungsite_url=live_server.url,
        token=pacs_user.token,
    )
    settings.LUNGSITE_DICOMWEB_URL = pacs.dicomweb_url
    settings.LUNGSITE_DICOMWEB_USER, settings.LUNGSITE_DICOMWEB_PASSWORD = USER, PASSWORD
    pacs.start()
    yield pacs
    pacs.stop()


def _wado_instance(orthanc: Orthanc, study: str, series: str, sop: str) -> pydicom.Dataset:
    response = orthanc.get(
        f"/dicom-web/studies/{study}/series/{series}/instances/{sop}",
        headers={"Accept": 'multipart/related; type="application/dicom"'},
    )
    assert response.status_code == 200, response.text[:500]
    head = f"Content-Type: {response.headers['Content-Type']}\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + response.content)
    (part,) = list(message.iter_parts())
    return pydicom.dcmread(io.BytesIO(part.get_payload(decode=True)))


def _series_of(orthanc: Orthanc, study: str, modality: str) -> list[dict]:
    response = orthanc.get(f"/dicom-web/studies/{study}/series", params={"Modality": modality})
    assert response.status_code in (200, 204), response.text[:500]
    return response.json() if response.status_code == 200 else []


def _check_results_in_orthanc(orthanc: Orthanc, received, source: pydicom.Dataset) -> None:
    """Every result object as delivered to Orthanc, read back: the TID 1500 report through
    highdicom's MeasurementReport, each parametric map's values, each secondary capture."""
    from pacs.honesty import honesty_statement
    from pacs.models import ResultObject

    prediction = received.prediction
    results = list(received.results.all())
    assert [r.state for r in results] == [ResultObject.SENT] * len(results)
    sr_row = next(r for r in results if r.kind == ResultObject.KIND_SR)
    positives = sorted(f["name"] for f in prediction.results_json["findings"] if f["positive"])
    for kind in (ResultObject.KIND_PM, ResultObject.KIND_SC):
        assert sorted(r.finding for r in results if r.kind == kind) == positives

    study = source.StudyInstanceUID
    sr_series = {s["0020000E"]["Value"][0] for s in _series_of(orthanc, study, "SR")}
    assert sr_row.series_instance_uid in sr_series
    sr = _wado_instance(orthanc, study, sr_row.series_instance_uid, sr_row.sop_instance_uid)
    assert sr.StudyInstanceUID == study and sr.SOPInstanceUID == sr_row.sop_instance_uid
    assert str(sr.PatientName) == str(source.PatientName) and sr.PatientID == source.PatientID
    report = hd.sr.MeasurementReport.from_sequence([sr])
    groups = {group.tracking_identifier: group for group in report.get_image_measurement_groups()}
    for finding in prediction.results_json["findings"]:
        group = groups[finding["name"]]
        assert group.finding_type == coding.finding_concept(finding["name"])
        (probability,) = group.get_measurements(name=coding.PROBABILITY)
        assert probability.value == pytest.approx(finding["probability"], abs=1e-6)
        (threshold,) = group.get_measurements(name=coding.THRESHOLD)
        assert threshold.value == pytest.approx(finding["threshold"])
        (evaluation,) = group.get_qualitative_evaluations()
        assert evaluation.value == (coding.PRESENT if finding["positive"] else coding.ABSENT)
        assert group.source_images[0].referenced_sop_instance_uid == source.SOPInstanceUID
    assert len(groups) == len(prediction.results_json["findings"])
    (device,) = report.get_observer_contexts()
    assert device.observer_identifying_attributes.serial_number == prediction.recorded_model["sha256"]
    assert prediction.untrained and honesty_statement(prediction).upper().startswith("UNTRAINED")
    assert honesty_statement(prediction).encode() in sr.to_json().encode()

    for row in results:
        if row.kind == ResultObject.KIND_SR:
            continue
        instance = _wado_instance(orthanc, study, row.series_instance_uid, row.sop_instance_uid)
        assert instance.StudyInstanceUID == study and instance.SeriesInstanceUID == row.series_instance_uid
        assert str(instance.PatientName) == str(source.PatientName)
        assert "UNTRAINED" in instance.ImageComments and row.finding in instance.ImageComments
        if row.kind == ResultObject.KIND_PM:
            assert instance.SOPClassUID == "1.2.840.10008.5.1.4.1.1.30"  # Parametric Map Storage
            assert instance.pixel_array.shape == (source.Rows, source.Columns)
            assert instance.pixel_array.dtype == np.float32 and instance.pixel_array.max() <= 1.0
        else:
            assert instance.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"  # Secondary Capture Image Storage
            pixels = instance.pixel_array
            assert pixels.ndim == 3 and pixels.shape[2] == 3 and pixels.std() > 1


def _database_text() -> str:
    """Every row of every table, as text (SQLite or Postgres alike)."""
    chunks = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            chunks.extend(repr(row) for row in cursor.fetchall())
    return "\n".join(chunks)


def _storage_bytes() -> list[tuple[Path, bytes]]:
    root = Path(storages["xray_images"].location)
    return [(Path(d) / n, (Path(d) / n).read_bytes()) for d, _, names in os.walk(root) for n in names]


def _named(chest_dicom: bytes) -> tuple[bytes, pydicom.Dataset]:
    """The same radiograph as another instance of a named patient; the referring physician's name
    has one component, which highdicom warns about, quoting it."""
    ds = pydicom.dcmread(io.BytesIO(chest_dicom))
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.SeriesInstanceUID = pydicom.uid.generate_uid()
    ds.PatientName = "Quaxley^Ermintrude^Jolanda"
    ds.PatientID = "MRN-77341920"
    ds.PatientBirthDate = "19440229"
    ds.ReferringPhysicianName = "Plonkington"
    ds.AccessionNumber = "ACC99218877"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue(), pydicom.dcmread(io.BytesIO(buffer.getvalue()), stop_before_pixels=True)


def test_it_round_trips_a_chest_radiograph_through_orthanc_by_c_store_and_stow_rs(
    orthanc, starter_model, chest_dicom, auditor, client, caplog, capfd
):
    from pacs.models import ReceivedInstance

    caplog.set_level(logging.DEBUG)
    source = pydicom.dcmread(io.BytesIO(chest_dicom), stop_before_pixels=True)
    uploaded = orthanc.upload(chest_dicom)

    stored = orthanc.post("/modalities/lungsite/store", data=uploaded["ID"])
    assert stored.status_code == 200, stored.text + orthanc.log_tail()
    by_cstore = ReceivedInstance.objects.get(source=ReceivedInstance.SOURCE_CSTORE)
    assert by_cstore.state == ReceivedInstance.DONE, by_cstore.reason
    assert by_cstore.sop_instance_uid == source.SOPInstanceUID
    assert by_cstore.prediction.source == "pacs"
    _check_results_in_orthanc(orthanc, by_cstore, source)

    # The same instance again, by STOW-RS: taken, recorded, not analysed a second time.
    sent = orthanc.post("/dicom-web/servers/lungsite/stow", json={"Resources": [uploaded["ID"]]})
    assert sent.status_code == 200, sent.text + orthanc.log_tail()
    again = ReceivedInstance.objects.get(source=ReceivedInstance.SOURCE_STOW)
    assert again.state == ReceivedInstance.SKIPPED and again.duplicate_of_id == by_cstore.pk
    assert again.prediction_id is None and not again.results.exists()

    # Another instance of a named patient, by STOW-RS.
    named_bytes, named = _named(chest_dicom)
    named_id = orthanc.upload(named_bytes)["ID"]
    sent = orthanc.post("/dicom-web/servers/lungsite/stow", json={"Resources": [named_id]})
    assert sent.status_code == 200, sent.text + orthanc.log_tail()
    by_stow = ReceivedInstance.objects.get(sop_instance_uid=named.SOPInstanceUID)
    assert by_stow.state == ReceivedInstance.DONE, by_stow.reason
    _check_results_in_orthanc(orthanc, by_stow, named)
    # The same pixels, the same version: the same numbers either way in.
    np.testing.assert_allclose(
        [f["probability"] for f in by_stow.prediction.results_json["findings"]],
        [f["probability"] for f in by_cstore.prediction.results_json["findings"]],
        atol=1e-6,
    )

    # No patient data at rest in lungsite: its database and its storage never saw the header.
    phi = []
    for header in (source, named):
        name = str(header.PatientName)
        phi += [name, *name.split("^"), header.PatientID, header.PatientBirthDate]
    phi += [str(named.ReferringPhysicianName), named.AccessionNumber]
    assert all(phi)
    text = _database_text()
    files = _storage_bytes()
    assert files, "the analysed images should be stored"
    for value in phi:
        assert value not in text, f"{value!r} found in the database"
        for path, data in files:
            assert value.encode() not in data, f"{value!r} found in {path}"

    # Nor in any log: every record of the round trip (DEBUG and up, every library), and whatever
    # reached stdout or stderr. highdicom did warn about the one-component name, redacted.
    logs = caplog.text + "".join(capfd.readouterr())
    for value in phi:
        assert value not in logs, f"{value!r} found in the logs"
    assert "unlikely to represent the intended person name" in logs and "[redacted]" in logs

    client.force_login(auditor)
    page = client.get("/worklist/")
    assert page.status_code == 200
    assert page.content.decode().count("delivery sent") == 2


def test_it_keeps_results_while_orthanc_is_down_and_delivers_them_after_it_is_back(
    orthanc, starter_model, chest_dicom, auditor, client
):
    from django.core.management import call_command

    from pacs.models import ReceivedInstance, ResultObject
    from pacs.services import instance_receive

    source = pydicom.dcmread(io.BytesIO(chest_dicom), stop_before_pixels=True)
    orthanc.upload(chest_dicom)  # the PACS holds the study, as when it routed it to lungsite
    orthanc.stop()

    received = instance_receive(dataset_bytes=chest_dicom, source=ReceivedInstance.SOURCE_CSTORE)
    assert received.state == ReceivedInstance.DONE
    results = list(received.results.all())
    assert results and all(r.state == ResultObject.PENDING and r.attempts == 1 for r in results)
    assert all("cannot be reached" in r.last_error for r in results)
    client.force_login(auditor)
    assert "delivery pending" in client.get("/worklist/").content.decode()

    time.sleep(1.2)
    call_command("pacs_deliver", stdout=io.StringIO())  # still down: a second attempt, later next try
    again = list(received.results.all())
    assert all(r.state == ResultObject.PENDING and r.attempts == 2 for r in again)
    assert all(b.next_try_at > a.next_try_at for a, b in zip(results, again, strict=True))

    orthanc.start()
    time.sleep(2.2)
    out = io.StringIO()
    call_command("pacs_deliver", stdout=out)
    assert json.loads(out.getvalue().splitlines()[-1])["sent"] == len(results)
    received.refresh_from_db()
    _check_results_in_orthanc(orthanc, received, source)
    assert "delivery sent" in client.get("/worklist/").content.decode()
