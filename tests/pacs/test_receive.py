"""Instances in, without a PACS to send results to: instance_receive with real DICOM files, the
STOW-RS endpoint, the C-STORE receiver (a pynetdicom SCU as the sender), and the worklist."""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import uuid
from datetime import timedelta

import pydicom
import pytest
from pynetdicom import AE
from pynetdicom.sop_class import SecondaryCaptureImageStorage, Verification

from pacs.keys import accession_key
from pacs.models import ReceivedInstance, ResultObject
from pacs.services import InstanceRefused, instance_receive
from tests.conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SMALL_CHEST = ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm")  # 440x440 CR chest PA, no File Meta
NON_CHEST = ("nhsx_nccid", "sample_non_chest_OT.dcm")
TIBIA = ("pydicom_data", "RG3_J2KI.dcm")


def _read(parts) -> bytes:
    return shared_data_path(*parts).read_bytes()


def _changed(parts, **tags) -> bytes:
    ds = pydicom.dcmread(shared_data_path(*parts), force=True)
    for keyword, value in tags.items():
        if value is None:
            delattr(ds, keyword)
        else:
            setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


def _stow_body(*parts: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    return (
        body + f"--{boundary}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def test_it_analyses_a_chest_radiograph_and_keeps_its_results_pending_without_a_pacs(
    db, starter_model, settings
):
    settings.LUNGSITE_DICOMWEB_URL = ""
    received = instance_receive(dataset_bytes=_read(SMALL_CHEST), source=ReceivedInstance.SOURCE_CSTORE)
    assert received.state == ReceivedInstance.DONE
    assert received.prediction.source == "pacs" and received.prediction.model_id == starter_model.pk
    assert received.sop_instance_uid and received.study_instance_uid
    findings = received.prediction.results_json["findings"]
    top = max(f["probability"] - f["threshold"] for f in findings)
    assert received.top_margin == pytest.approx(top)
    kinds = sorted(r.kind for r in received.results.all())
    positives = sum(f["positive"] for f in findings)
    assert kinds == ["pm"] * positives + ["sc"] * positives + ["sr"]
    for result in received.results.all():
        assert result.state == ResultObject.PENDING and result.attempts == 1
        assert "LUNGSITE_DICOMWEB_URL is not set" in result.last_error
        assert result.next_try_at > received.finished_at


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (lambda: _read(NON_CHEST), "Modality OT: only frontal chest radiographs are analysed"),
        (lambda: _read(TIBIA), "Body part EXTREMITY: only frontal chest radiographs are analysed"),
        (lambda: _changed(SMALL_CHEST, ViewPosition="RL"), "Lateral view (RL): only frontal chest"),
        (lambda: _changed(SMALL_CHEST, PixelData=None), "not an image: no pixel data"),
    ],
)
def test_it_records_other_images_as_skipped_with_the_reason(db, starter_model, data, reason):
    from audit.models import Prediction

    received = instance_receive(dataset_bytes=data(), source=ReceivedInstance.SOURCE_STOW)
    assert received.state == ReceivedInstance.SKIPPED
    assert received.reason.startswith(reason)
    assert Prediction.objects.count() == 0 and ResultObject.objects.count() == 0


def test_it_refuses_malformed_bytes_and_records_why(db):
    with pytest.raises(InstanceRefused) as info:
        instance_receive(
            dataset_bytes=b"\x00" * 128 + b"DICM" + b"\xff" * 40, source=ReceivedInstance.SOURCE_STOW
        )
    assert info.value.received.state == ReceivedInstance.SKIPPED
    assert info.value.received.reason.startswith("malformed DICOM")


def test_it_answers_stow_rs_with_the_stored_and_the_failed_instances(api, pacs_user, starter_model):
    chest, lateral = _read(SMALL_CHEST), _changed(SMALL_CHEST, ViewPosition="LL", SOPInstanceUID="1.2.3.4")
    body, content_type = _stow_body(chest, b"not dicom at all", lateral)
    response = api(pacs_user).post("/dicom-web/studies", data=body, content_type=content_type)
    assert response.status_code == 202
    assert response["Content-Type"].startswith("application/dicom+json")
    answer = json.loads(response.content)
    stored = [item["00081155"]["Value"][0] for item in answer["00081199"]["Value"]]
    assert stored == [pydicom.dcmread(io.BytesIO(chest), force=True).SOPInstanceUID, "1.2.3.4"]
    assert [item["00081197"]["Value"][0] for item in answer["00081198"]["Value"]] == [0xC000]
    states = list(ReceivedInstance.objects.order_by("id").values_list("state", flat=True))
    assert states == [ReceivedInstance.DONE, ReceivedInstance.SKIPPED, ReceivedInstance.SKIPPED]


def test_it_answers_stow_rs_200_when_every_instance_is_taken(api, pacs_user, db):
    body, content_type = _stow_body(_read(NON_CHEST))
    response = api(pacs_user).post("/dicom-web/studies/", data=body, content_type=content_type)
    assert response.status_code == 200
    assert "00081198" not in json.loads(response.content)


def test_it_refuses_stow_rs_without_a_token_or_the_permission(api, clinician):
    body, content_type = _stow_body(_read(NON_CHEST))
    assert api().post("/dicom-web/studies", data=body, content_type=content_type).status_code == 401
    assert api(clinician).post("/dicom-web/studies", data=body, content_type=content_type).status_code == 403
    assert ReceivedInstance.objects.count() == 0


def test_it_refuses_stow_rs_bodies_that_are_not_multipart_related(api, pacs_user):
    client = api(pacs_user)
    assert client.post("/dicom-web/studies", data=b"x", content_type="application/dicom").status_code == 415
    response = client.post(
        "/dicom-web/studies", data=b"--x--\r\n", content_type="multipart/related; boundary=x"
    )
    assert response.status_code == 400
    assert ReceivedInstance.objects.count() == 0


@pytest.mark.django_db(transaction=True)  # the receiver writes from its own thread
def test_it_answers_c_echo_and_c_store_and_keeps_serving(dicom_listener):
    ae_title, port = dicom_listener
    scu = AE(ae_title="TESTSCU")
    scu.add_requested_context(Verification)
    scu.add_requested_context(SecondaryCaptureImageStorage, pydicom.uid.ImplicitVRLittleEndian)
    for _ in range(2):  # a second association after the first: the receiver keeps serving
        assoc = scu.associate("127.0.0.1", port, ae_title=ae_title)
        assert assoc.is_established
        assert assoc.send_c_echo().Status == 0x0000
        status = assoc.send_c_store(pydicom.dcmread(shared_data_path(*NON_CHEST)))
        assert status.Status == 0x0000
        assoc.release()
    rows = list(ReceivedInstance.objects.values_list("source", "state", "modality"))
    assert rows == [(ReceivedInstance.SOURCE_CSTORE, ReceivedInstance.SKIPPED, "OT")] * 2


def test_it_lists_the_worklist_abnormal_first_or_newest_first(client, auditor, clinician, db):
    low = ReceivedInstance.objects.create(source="c-store", state="done", top_margin=-0.2, top_finding="Mass")
    high = ReceivedInstance.objects.create(
        source="c-store", state="done", top_margin=0.3, top_finding="Edema"
    )
    skipped = ReceivedInstance.objects.create(
        source="stow-rs", state="skipped", reason="modality CT: only ..."
    )
    client.force_login(clinician)
    assert client.get("/worklist/").status_code == 403
    client.force_login(auditor)
    # Abnormal first, then the rest, newest first within each: a new normal study is not buried.
    default = client.get("/worklist/")
    assert [row.pk for row in default.context["page"]] == [high.pk, skipped.pk, low.pk]
    assert "modality CT" in default.content.decode()
    newest = [row.pk for row in client.get("/worklist/?order=newest").context["page"]]
    assert newest == [skipped.pk, high.pk, low.pk]
    older_positive = ReceivedInstance.objects.create(
        source="c-store", state="done", top_margin=0.05, top_finding="Mass"
    )
    ReceivedInstance.objects.filter(pk=older_positive.pk).update(
        received_at=high.received_at - timedelta(days=1)
    )
    abnormal = [row.pk for row in client.get("/worklist/?order=abnormal").context["page"]]
    assert abnormal == [high.pk, older_positive.pk, skipped.pk, low.pk]


def test_it_pages_the_worklist_by_page_number_keeping_order_and_filters(client, auditor):
    ReceivedInstance.objects.bulk_create(
        ReceivedInstance(source="c-store", state="skipped", reason=f"row {i}", modality="OT")
        for i in range(120)
    )
    client.force_login(auditor)
    first = client.get("/worklist/", {"order": "newest", "state": "skipped"})
    html = first.content.decode()
    assert first.context["page"].paginator.num_pages == 3
    assert 'href="?order=newest&amp;state=skipped&amp;page=2" rel="next"' in html
    second = client.get("/worklist/", {"order": "newest", "state": "skipped", "page": "2"})
    assert second.status_code == 200 and second.context["page"].number == 2
    assert len(second.context["page"].object_list) == 50
    assert 'aria-current="page">2</a>' in second.content.decode()
    assert set(first.context["page"].object_list).isdisjoint(second.context["page"].object_list)
    third = client.get("/worklist/", {"order": "newest", "state": "skipped", "page": "3"})
    assert len(third.context["page"].object_list) == 20 and "51–100 of 120" in second.content.decode()


def test_it_filters_the_worklist_by_state_positive_result_and_accession_number(client, auditor):
    done = ReceivedInstance.objects.create(
        source="c-store", state="done", top_margin=0.2, accession_key=accession_key("A-1")
    )
    normal = ReceivedInstance.objects.create(
        source="c-store", state="done", top_margin=-0.3, accession_key=accession_key("A-2")
    )
    failed = ReceivedInstance.objects.create(source="stow-rs", state="failed", reason="queue down")
    client.force_login(auditor)

    def rows(**query):
        return {row.pk for row in client.get("/worklist/", query).context["page"]}

    assert rows(state="failed") == {failed.pk}
    assert rows(state="done") == {done.pk, normal.pk}
    assert rows(positive="1") == {done.pk}
    assert rows(accession="A-2") == {normal.pk}
    assert rows(state="nonsense") == {done.pk, normal.pk, failed.pk}
    html = client.get("/worklist/", {"accession": "A-1"}).content.decode()
    assert "<strong>A-1</strong>" in html and 'value="A-1"' in html


def test_it_keeps_keyed_hashes_for_the_accession_number_and_the_patient_id(db, starter_model, settings):
    settings.LUNGSITE_DICOMWEB_URL = ""
    settings.LUNGSITE_PATIENT_KEY_SECRET = "secret-one"
    first = instance_receive(
        dataset_bytes=_changed(SMALL_CHEST, PatientID="PID-42", AccessionNumber="ACC77"),
        source=ReceivedInstance.SOURCE_CSTORE,
    )
    again = instance_receive(
        dataset_bytes=_changed(SMALL_CHEST, PatientID="PID-42", SOPInstanceUID=pydicom.uid.generate_uid()),
        source=ReceivedInstance.SOURCE_CSTORE,
    )
    other = instance_receive(
        dataset_bytes=_changed(SMALL_CHEST, PatientID="PID-43", SOPInstanceUID=pydicom.uid.generate_uid()),
        source=ReceivedInstance.SOURCE_CSTORE,
    )
    nobody = instance_receive(
        dataset_bytes=_changed(SMALL_CHEST, SOPInstanceUID=pydicom.uid.generate_uid()),
        source=ReceivedInstance.SOURCE_CSTORE,
    )
    assert first.accession_key == accession_key("ACC77") and len(first.accession_key) == 64
    expected = hmac.new(b"secret-one", b"\x00PID-42", hashlib.sha256).hexdigest()
    assert first.patient_key == again.patient_key == expected
    assert other.patient_key != first.patient_key and len(other.patient_key) == 64
    assert nobody.patient_key == ""  # no PatientID sent: nothing to match
    # The ID itself is nowhere in the row.
    assert all(
        "PID-42" not in str(value)
        for value in ReceivedInstance.objects.filter(pk=first.pk).values().get().values()
    )
    settings.LUNGSITE_PATIENT_KEY_SECRET = "secret-two"
    from pacs.services import patient_key

    assert (
        patient_key(pydicom.dcmread(io.BytesIO(_changed(SMALL_CHEST, PatientID="PID-42")), force=True))
        != expected
    )


def test_it_queues_a_copy_without_the_patient_for_the_worker():
    from pacs.services import analysis_copy

    data = _read(("pydicom_data", "RG1_UNCR.dcm"))
    source = pydicom.dcmread(io.BytesIO(data))
    copy_bytes = analysis_copy(source)
    copy = pydicom.dcmread(io.BytesIO(copy_bytes))
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "AccessionNumber", "StudyDate"):
        assert keyword in source and keyword not in copy
    for value in (str(source.PatientName), source.PatientID, source.PatientBirthDate):
        assert value.encode() not in copy_bytes
    assert copy.SOPInstanceUID == source.SOPInstanceUID and copy.StudyInstanceUID == source.StudyInstanceUID
    assert (copy.pixel_array == source.pixel_array).all()


def test_it_refuses_a_stow_rs_body_over_the_upload_limit(api, pacs_user, settings):
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1024 * 1024
    body, content_type = _stow_body(b"\x00" * (1024 * 1024 + 10))
    response = api(pacs_user).post("/dicom-web/studies", data=body, content_type=content_type)
    assert response.status_code == 413
    assert ReceivedInstance.objects.count() == 0


def test_it_refuses_a_stow_rs_request_past_the_part_limit_before_recording_anything(api, pacs_user, settings):
    settings.LUNGSITE_STOW_MAX_PARTS = 50
    body, content_type = _stow_body(*[b"junk part %d" % i for i in range(3000)])
    response = api(pacs_user).post("/dicom-web/studies", data=body, content_type=content_type)
    assert response.status_code == 413
    assert "at most 50" in response.json()["error"]["message"]
    assert ReceivedInstance.objects.count() == 0


def test_it_refuses_a_chunked_body_the_server_did_not_dechunk_instead_of_answering_200(api, pacs_user):
    body, content_type = _stow_body(_read(NON_CHEST))
    response = api(pacs_user).generic(
        "POST", "/dicom-web/studies", data=b"", content_type=content_type, HTTP_TRANSFER_ENCODING="chunked"
    )
    assert response.status_code == 411
    assert ReceivedInstance.objects.count() == 0


def test_it_does_not_analyse_an_instance_again_and_flags_a_reused_uid(db, starter_model, settings):
    from audit.models import Prediction

    settings.LUNGSITE_DICOMWEB_URL = ""
    first = instance_receive(dataset_bytes=_read(SMALL_CHEST), source=ReceivedInstance.SOURCE_CSTORE)
    again = instance_receive(dataset_bytes=_read(SMALL_CHEST), source=ReceivedInstance.SOURCE_STOW)
    assert first.state == ReceivedInstance.DONE and first.pixel_sha256
    assert again.state == ReceivedInstance.SKIPPED and again.duplicate_of_id == first.pk
    assert again.reason.startswith("already analysed")
    assert Prediction.objects.count() == 1 and ResultObject.objects.filter(received=again).count() == 0

    ds = pydicom.dcmread(shared_data_path(*SMALL_CHEST), force=True)
    pixels = bytearray(ds.PixelData)
    pixels[:64] = bytes(64)
    with pytest.raises(InstanceRefused) as info:
        instance_receive(
            dataset_bytes=_changed(SMALL_CHEST, PixelData=bytes(pixels)), source=ReceivedInstance.SOURCE_STOW
        )
    flagged = info.value.received
    assert info.value.status == 0x0111  # duplicate SOP instance
    assert flagged.state == ReceivedInstance.FAILED and flagged.duplicate_of_id == first.pk
    assert "reused with other pixels" in flagged.reason
    assert Prediction.objects.count() == 1
