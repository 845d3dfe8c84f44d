"""One policy for every door: the same cases sent through the upload page, the REST API, a batch
job and the PACS (STOW-RS) end the same way at each: the same refusal code with no audit row and no
stored file, or exactly one row with its file name, its stored image and its honesty statement.

The PACS door takes DICOM only, so the PNG cases go through the other three."""

from __future__ import annotations

import io
import uuid

import pydicom
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import Prediction
from jobs.models import JobImage
from pacs.models import ReceivedInstance
from registry.models import ModelVersion
from tests.conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")
CHEST_DCM = ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm")  # 440x440 CR chest PA
NON_CHEST = ("nhsx_nccid", "sample_non_chest_OT.dcm")  # modality OT


def _part10(ds) -> bytes:
    """The dataset as a DICOM file with its preamble and File Meta, as a PACS sends it."""
    ds.SOPInstanceUID = pydicom.uid.generate_uid()
    meta = pydicom.dataset.FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds.file_meta = meta
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _dicom(parts=CHEST_DCM, **tags) -> bytes:
    ds = pydicom.dcmread(shared_data_path(*parts), force=True)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    return _part10(ds)


def _cut_pixels() -> bytes:
    ds = pydicom.dcmread(shared_data_path(*CHEST_DCM), force=True)
    ds.PixelData = ds.PixelData[: len(ds.PixelData) // 3]  # a third of the pixels the header declares
    return _part10(ds)


def _pixel_bomb() -> bytes:
    """A valid PNG whose header declares 100,000 x 100,000 pixels (a few KB of zeros deflated)."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", 100_000, 100_000, 8, 0, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 100_001 * 16)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")


# name -> (file name, bytes factory, expected code or None for "one row")
CASES = {
    "good_png": ("00000075_000.png", lambda: shared_data_path(*NIH_PNG).read_bytes(), None),
    "good_dicom": ("chest.dcm", _dicom, None),
    "lateral": ("lateral.dcm", lambda: _dicom(ViewPosition="LL"), "not_frontal_chest"),
    "non_chest_modality": ("ot.dcm", lambda: _dicom(NON_CHEST), "not_frontal_chest"),
    "burned_in_annotation": ("burned.dcm", lambda: _dicom(BurnedInAnnotation="YES"), "burned_in_annotation"),
    "undecodable_dicom": ("cut.dcm", _cut_pixels, "truncated"),
    "undecodable_png": ("broken.png", lambda: b"\x89PNG\r\n\x1a\n" + b"\x00" * 64, "not_an_image"),
    "oversize": ("big.dcm", _dicom, "too_large"),
    "empty": ("empty.png", lambda: b"", "empty"),
    "text_file": ("notes.png", lambda: b"Patient: Jane Doe, chest pain\n" * 20, "not_an_image"),
    "pixel_bomb": ("bomb.png", _pixel_bomb, "too_many_pixels"),
    "non_finite_version": ("chest.dcm", _dicom, "model_output_not_finite"),
}
DOORS = ("page", "api", "job", "pacs")


def _stored_files(settings) -> list[str]:
    root = settings.STORAGES["xray_images"]["OPTIONS"]["location"]
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())


def _through_page(client, name, data):
    response = client.post(
        "/", {"image": SimpleUploadedFile(name, data)}, HTTP_X_REQUESTED_WITH="XMLHttpRequest"
    )
    if response.status_code == 201:
        return None
    return response.json()["error"]["code"]


def _through_api(client, name, data):
    response = client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile(name, data)}, format="multipart"
    )
    if response.status_code == 201:
        assert response.json()["warning"] == Prediction.objects.get().honesty_statement
        return None
    return response.json()["error"]["code"]


def _through_job(client, name, data, eager_jobs):
    with eager_jobs():
        response = client.post(
            "/api/v1/jobs/", {"images": [SimpleUploadedFile(name, data)]}, format="multipart"
        )
    assert response.status_code == 202
    image = JobImage.objects.get()
    assert image.state != JobImage.STATE_PENDING
    job = client.get(f"/api/v1/jobs/{image.job_id}/").json()
    if image.state == JobImage.STATE_DONE:
        assert job["warning"] == image.prediction.honesty_statement
        return None
    assert image.reason and image.prediction_id is None
    return image.code


def _through_pacs(client, name, data):
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    response = client.post(
        "/dicom-web/studies",
        data=body,
        content_type=f'multipart/related; type="application/dicom"; boundary={boundary}',
    )
    if response.status_code == 413:  # the whole request is past the upload limit: nothing recorded
        assert not ReceivedInstance.objects.exists()
        return response.json()["error"]["code"]
    assert response.status_code in (200, 202, 409)
    received = ReceivedInstance.objects.get()
    assert received.state != ReceivedInstance.QUEUED
    if received.state == ReceivedInstance.DONE:
        return None
    assert received.reason and received.prediction_id is None
    return received.code


@pytest.fixture
def pacs_sender(db, django_user_model):
    from django.contrib.auth.models import Permission

    user = django_user_model.objects.create_user(username="pacs", password="pw-pacs-service")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="pacs", codename="add_receivedinstance")
    )
    return user


@pytest.fixture
def eager(settings):
    from lungsite.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("door", DOORS)
def test_it_ends_the_same_way_at_every_door(
    door, case, client, api, clinician, pacs_sender, starter_model, settings, eager, eager_jobs
):
    name, make, expected = CASES[case]
    data = make()
    if door == "pacs" and data[128:132] != b"DICM":
        pytest.skip("the PACS door takes DICOM only")
    if case == "oversize":
        settings.LUNGSITE_MAX_UPLOAD_MB = 0  # every file is past the limit
    if case == "non_finite_version":
        from tests.registry.conftest import version_with_nan_outputs

        bad = version_with_nan_outputs()
        ModelVersion.objects.filter(pk=starter_model.pk).update(is_active=False)
        ModelVersion.objects.filter(pk=bad.pk).update(is_active=True)

    if door == "page":
        client.force_login(clinician)
        code = _through_page(client, name, data)
    elif door == "api":
        code = _through_api(api(clinician), name, data)
    elif door == "job":
        code = _through_job(api(clinician), name, data, eager_jobs)
    else:
        code = _through_pacs(api(pacs_sender), name, data)

    assert code == expected
    if expected is None:
        prediction = Prediction.objects.get()
        recorded = name if door != "pacs" else prediction.file_name
        assert prediction.file_name == recorded and prediction.file_name
        assert prediction.honesty["state"] == "untrained" and prediction.honesty_statement
        assert _stored_files(settings) == [prediction.image_url]
    else:
        assert Prediction.objects.count() == 0
        assert _stored_files(settings) == []
