"""analysis.services.analyse end to end on real images: one row per prediction, the
stored image without patient data, nothing left behind when any step fails; heatmap PNGs rendered
on first fetch."""

import hashlib
import io
from pathlib import Path

import numpy as np
import pytest
from django.core.files.storage import FileSystemStorage
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db import DatabaseError
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from analysis import services as analysis_services
from analysis.services import analyse
from audit import services as audit_services
from audit.checkpoints import CHECKPOINT_DIR
from audit.models import Prediction
from common.errors import Refused, Unavailable
from engine.decode import decode
from registry.models import DEFAULT_CLASS_NAMES
from tests.conftest import shared_data_path

NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")
SIIM_DCM = ("torchxrayvision_tests", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _stored_files(settings) -> list[str]:
    root = Path(settings.STORAGES["xray_images"]["OPTIONS"]["location"])
    if not root.exists():
        return []
    # Not the chain's checkpoints, which an append writes whenever the ids pass a multiple of
    # LUNGSITE_AUDIT_CHECKPOINT_EVERY (ids keep growing from test to test on Postgres).
    names = (str(p.relative_to(root)) for p in root.rglob("*") if p.is_file())
    return sorted(name for name in names if not name.startswith(f"{CHECKPOINT_DIR}/"))


def _stored_bytes(prediction) -> bytes:
    return audit_services.image_bytes(prediction=prediction)[0]


def _predict(data: bytes, user, name: str = "upload"):
    return analyse(upload=SimpleUploadedFile(name, data), user=user, source="api")


@pytest.mark.parametrize(
    "parts",
    [
        NIH_PNG,
        ("nih_reproduce_chexnet", "images", "00004934_000.png"),  # RGBA
        ("bob_med_tb", "16bits.png"),
        ("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg"),
        SIIM_DCM,
        ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm"),
    ],
    ids=lambda p: p[-1][:30],
)
def test_it_predicts_and_logs_one_row(starter_model, clinician, settings, parts):
    data = shared_data_path(*parts).read_bytes()
    prediction = _predict(data, clinician, parts[-1])

    assert Prediction.objects.count() == 1
    row = Prediction.objects.get()
    assert row.pk == prediction.pk and row.model_id == starter_model.pk and row.user == clinician
    assert row.source == "api" and row.latency_ms > 0
    assert row.image_sha256 == hashlib.sha256(data).hexdigest()
    results = row.results_json
    assert results["untrained"] is True
    assert results["model"] == {
        "id": starter_model.pk,
        "version_name": starter_model.version_name,
        "sha256": starter_model.sha256,
        "untrained": True,
        "precision": "fp32",
    }
    assert [f["name"] for f in results["findings"]] == DEFAULT_CLASS_NAMES
    for finding in results["findings"]:
        assert 0.0 <= finding["probability"] <= 1.0 and finding["threshold"] == 0.5
        assert finding["positive"] is (finding["probability"] >= 0.5)
    # Postgres' jsonb does not keep key order; the output order lives in results_json["findings"].
    assert sorted(row.heatmap_maps()) == sorted(DEFAULT_CLASS_NAMES)
    assert np.asarray(row.heatmap_maps()["Edema"]).shape == (7, 7)

    # Exactly one stored file: the analysed image, and it decodes to the picture that was analysed.
    assert _stored_files(settings) == [row.image_url]
    stored = _stored_bytes(row)
    assert stored.startswith((b"\x89PNG", b"\xff\xd8\xff"))
    np.testing.assert_allclose(decode(stored), decode(data), atol=1 / 255 + 1e-6)


def test_it_never_stores_a_dicom_header(starter_model, clinician):
    data = shared_data_path(*SIIM_DCM).read_bytes()
    assert b"DICM" in data
    stored = _stored_bytes(_predict(data, clinician))
    assert stored.startswith(b"\x89PNG")
    assert b"DICM" not in stored and b"1.2.276.0.7230010" not in stored
    with Image.open(io.BytesIO(stored)) as png:
        assert not png.info.get("dicom") and set(png.info) <= {"dpi", "gamma", "srgb", "transparency"}


def test_it_strips_png_text_chunks_without_touching_pixels(starter_model, clinician):
    original = shared_data_path(*NIH_PNG).read_bytes()
    with Image.open(io.BytesIO(original)) as pil:
        info = PngInfo()
        info.add_text("PatientName", "Doe^Jane")
        info.add_itxt("Comment", "MRN 123456")
        buffer = io.BytesIO()
        pil.save(buffer, format="PNG", pnginfo=info)
    tagged = buffer.getvalue()
    assert b"Doe^Jane" in tagged

    stored = _stored_bytes(_predict(tagged, clinician))
    assert b"Doe^Jane" not in stored and b"MRN" not in stored and b"tEXt" not in stored
    assert np.array_equal(decode(stored), decode(tagged))


def test_it_strips_jpeg_exif_and_comments(starter_model, clinician):
    pixels = np.asarray(Image.open(shared_data_path(*NIH_PNG)).resize((256, 256)), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x010E] = "Patient Jane Doe"  # ImageDescription
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif, comment=b"MRN 123456")
    tagged = buffer.getvalue()
    assert b"Jane Doe" in tagged and b"MRN" in tagged

    stored = _stored_bytes(_predict(tagged, clinician))
    # Re-encoded from the decoded pixels (a gray JPEG decodes to 8-bit values: the same picture).
    assert stored.startswith(b"\x89PNG") and b"Jane Doe" not in stored and b"MRN" not in stored
    assert np.array_equal(decode(stored), decode(tagged))


@pytest.mark.parametrize(
    ("data", "code", "status"),
    [
        (b"", "empty", 400),
        (b"just some text, not an X-ray\n" * 20, "not_an_image", 415),
        (
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x01\x86\xa0\x00\x01\x86\xa0\x08\x00\x00\x00\x00",
            "too_many_pixels",
            413,
        ),
    ],
    ids=["empty", "text", "pixel_bomb"],
)
def test_it_refuses_bad_uploads_and_stores_nothing(starter_model, clinician, settings, data, code, status):
    with pytest.raises(Refused) as info:
        _predict(data, clinician)
    assert (info.value.code, info.value.status) == (code, status)
    assert not Prediction.objects.exists() and _stored_files(settings) == []


def test_it_refuses_a_truncated_upload(starter_model, clinician, settings):
    data = shared_data_path(*NIH_PNG).read_bytes()
    with pytest.raises(Refused) as info:
        _predict(data[: len(data) // 2], clinician)
    assert (info.value.code, info.value.status) == ("truncated", 400)
    assert not Prediction.objects.exists() and _stored_files(settings) == []


def test_it_refuses_an_oversize_upload(starter_model, clinician, settings):
    settings.LUNGSITE_MAX_UPLOAD_MB = 1
    with pytest.raises(Refused) as info:
        _predict(b"\x89PNG\r\n\x1a\n" + b"\x00" * (1024 * 1024), clinician)
    assert (info.value.code, info.value.status) == ("too_large", 413)
    assert "1 MB" in str(info.value)
    assert not Prediction.objects.exists() and _stored_files(settings) == []


@pytest.mark.django_db
def test_it_is_unavailable_without_an_active_model(clinician, settings):
    with pytest.raises(Unavailable) as info:
        _predict(shared_data_path(*NIH_PNG).read_bytes(), clinician)
    assert info.value.code == "no_model" and info.value.status == 503
    assert not Prediction.objects.exists() and _stored_files(settings) == []


def test_it_leaves_nothing_when_storage_fails(starter_model, clinician, settings, monkeypatch):
    def broken_save(self, name, content, max_length=None):
        raise OSError("disk is gone")

    monkeypatch.setattr(FileSystemStorage, "save", broken_save)
    with pytest.raises(Unavailable) as info:
        _predict(shared_data_path(*NIH_PNG).read_bytes(), clinician)
    assert info.value.code == "storage_unavailable"
    assert not Prediction.objects.exists() and _stored_files(settings) == []


def test_it_leaves_no_file_when_the_row_write_fails(starter_model, clinician, settings, monkeypatch):
    def broken_insert(**fields):
        assert _stored_files(settings) == [fields["image_url"]]  # the file was there until now
        raise DatabaseError("database is gone")

    monkeypatch.setattr(audit_services, "prediction_create_chained", broken_insert)
    with pytest.raises(Unavailable) as info:
        _predict(shared_data_path(*NIH_PNG).read_bytes(), clinician)
    assert info.value.code == "database_unavailable"
    assert not Prediction.objects.exists() and _stored_files(settings) == []


def test_it_stores_the_image_while_the_model_runs(starter_model, clinician, settings, monkeypatch):
    import threading

    seen = {}
    real_predict = analysis_services.predict

    def predict_watching_storage(model, tensor):
        seen["predict_thread"] = threading.get_ident()
        return real_predict(model, tensor)

    real_store = audit_services.image_store

    def store_watching(**kwargs):
        seen["store_thread"] = threading.get_ident()
        return real_store(**kwargs)

    monkeypatch.setattr(analysis_services, "predict", predict_watching_storage)
    monkeypatch.setattr(analysis_services, "image_store", store_watching)
    data = shared_data_path(*NIH_PNG).read_bytes()
    prediction = _predict(data, clinician)
    assert seen["store_thread"] != seen["predict_thread"] == threading.get_ident()
    assert prediction.image_sha256 == hashlib.sha256(data).hexdigest()
    assert prediction.stored_sha256 == hashlib.sha256(_stored_bytes(prediction)).hexdigest()
    assert _stored_files(settings) == [prediction.image_url]


def test_it_removes_the_stored_image_when_the_model_fails(starter_model, clinician, settings, monkeypatch):

    def broken_predict(model, tensor):
        raise RuntimeError("the runtime crashed")

    monkeypatch.setattr(analysis_services, "predict", broken_predict)
    with pytest.raises(RuntimeError, match="crashed"):
        _predict(shared_data_path(*NIH_PNG).read_bytes(), clinician)
    assert not Prediction.objects.exists() and _stored_files(settings) == []


def test_it_names_the_version_that_really_served(starter_model, clinician):
    from registry.services import model_version_activate, model_version_register
    from tests.registry.conftest import corrupt_stored_weights, variant_weights_bytes

    data = shared_data_path(*NIH_PNG).read_bytes()
    first = _predict(data, clinician)
    broken = model_version_register(
        data=variant_weights_bytes(7), version_name="broken-later", class_names=DEFAULT_CLASS_NAMES
    )
    model_version_activate(version=broken)
    corrupt_stored_weights(broken)

    second = _predict(data, clinician)
    assert second.model_id == starter_model.pk
    assert second.results_json["model"]["id"] == starter_model.pk
    assert second.results_json["findings"] == first.results_json["findings"]


def test_it_renders_a_heatmap_on_first_fetch_and_keeps_it(starter_model, clinician, settings, monkeypatch):
    prediction = _predict(shared_data_path(*NIH_PNG).read_bytes(), clinician)
    png = audit_services.heatmap_png(prediction=prediction, name="Cardiomegaly")
    with Image.open(io.BytesIO(png)) as image:
        assert image.format == "PNG" and image.size == (512, 512)
    assert audit_services.heatmap_name(prediction=prediction, name="Cardiomegaly") in _stored_files(settings)

    def no_render(*args, **kwargs):
        raise AssertionError("rendered twice")

    monkeypatch.setattr("engine.heatmaps.heatmap_overlay_png", no_render)
    assert audit_services.heatmap_png(prediction=prediction, name="Cardiomegaly") == png
    with pytest.raises(LookupError):
        audit_services.heatmap_png(prediction=prediction, name="Hernia")


def test_it_returns_the_stored_image_with_its_type(starter_model, clinician):
    jpeg = shared_data_path("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg").read_bytes()
    data, content_type = audit_services.image_bytes(prediction=_predict(jpeg, clinician))
    assert content_type == "image/png" and data.startswith(b"\x89PNG")  # re-encoded, as every upload
    data, content_type = audit_services.image_bytes(
        prediction=_predict(shared_data_path(*SIIM_DCM).read_bytes(), clinician)
    )
    assert content_type == "image/png" and data.startswith(b"\x89PNG")


def test_it_stores_a_rotated_jpeg_as_it_was_analysed(starter_model, clinician):
    pixels = np.asarray(Image.open(shared_data_path(*NIH_PNG)).resize((160, 96)), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    exif[0x010E] = "Patient Jane Doe"
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95, exif=exif)
    tagged = buffer.getvalue()
    analysed = decode(tagged)
    assert analysed.shape == (160, 96)  # upright, as a viewer shows it

    stored = _stored_bytes(_predict(tagged, clinician))
    assert stored.startswith(b"\x89PNG") and b"Jane Doe" not in stored
    np.testing.assert_allclose(decode(stored), analysed, atol=1 / 255 + 1e-6)
