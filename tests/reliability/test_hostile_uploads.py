"""The hostile-upload corpus against POST /api/v1/predictions/ (DESIGN.md "Reliability and security").

Refused uploads: a 4xx with the error shape, nothing stored, no audit row. Valid ones: 201 with
finite probabilities in [0, 1] and no patient data in the stored image. None: a 5xx. The server
keeps serving after all of it, and pixel counts are checked before any pixel is decoded.
"""

from __future__ import annotations

import math
import time
import tracemalloc
from pathlib import Path

import pytest
from django.core.files.storage import storages

from audit.models import Prediction
from tests.conftest import shared_data_path
from tests.reliability import corpus
from tests.reliability.conftest import error_of, post_image, stored_files

MAX_UPLOAD_MB = 1


@pytest.fixture
def small_limits(settings):
    # As LUNGSITE_MAX_UPLOAD_MB=1 in the environment would set them (lungsite/settings.py).
    settings.LUNGSITE_MAX_UPLOAD_MB = MAX_UPLOAD_MB
    settings.FILE_UPLOAD_MAX_MEMORY_SIZE = MAX_UPLOAD_MB * 1024 * 1024
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = settings.FILE_UPLOAD_MAX_MEMORY_SIZE + 1024 * 1024
    return settings


@pytest.fixture
def api(token_client, clinician, starter_model):
    client = token_client(clinician)
    client.raise_request_exception = False  # a crash is a 500 to record, not an error to stop at
    return client


def _check_refused(case_name: str, response, statuses, rows_before, files_before) -> list[str]:
    problems = []
    if not 400 <= response.status_code < 500:
        return [f"{case_name}: expected a 4xx, got {response.status_code} {response.content[:200]!r}"]
    if statuses and response.status_code not in statuses:
        problems.append(
            f"{case_name}: expected {statuses}, got {response.status_code} {response.content[:200]!r}"
        )
    try:
        error_of(response)
    except (AssertionError, ValueError) as exc:
        problems.append(f"{case_name}: error body is not {{'error': {{code, message}}}}: {exc}")
    if Prediction.objects.count() != rows_before:
        problems.append(f"{case_name}: a refused upload wrote an audit row")
    if stored_files() != files_before:
        problems.append(
            f"{case_name}: a refused upload left files in storage: {set(stored_files()) - set(files_before)}"
        )
    return problems


def _check_valid(case: corpus.Case, response, rows_before, files_before, active_id: int) -> list[str]:
    name = case.name
    if response.status_code != 201:
        return [f"{name}: expected 201, got {response.status_code} {response.content[:300]!r}"]
    body = response.json()
    problems = []
    probabilities = [finding["probability"] for finding in body.get("findings", [])]
    if len(probabilities) != 13 or not all(
        isinstance(p, float | int) and math.isfinite(p) and 0.0 <= p <= 1.0 for p in probabilities
    ):
        problems.append(f"{name}: probabilities not 13 finite values in [0, 1]: {probabilities}")
    if body.get("model", {}).get("id") != active_id:
        problems.append(f"{name}: response names model {body.get('model')}, active is {active_id}")
    if Prediction.objects.count() != rows_before + 1:
        problems.append(f"{name}: expected exactly one new audit row")
    row = Prediction.objects.filter(pk=body.get("id")).first()
    if row is None:
        return [*problems, f"{name}: no audit row with the response's id {body.get('id')}"]
    if row.model_id != active_id:
        problems.append(f"{name}: audit row names model {row.model_id}, expected {active_id}")
    storage = storages["xray_images"]
    root = Path(storage.location).resolve()
    stored = Path(storage.path(row.image_url)).resolve()
    if root not in stored.parents:
        problems.append(f"{name}: stored outside the storage root: {stored}")
    if ".." in row.image_url or "passwd" in row.image_url or "script" in row.image_url:
        problems.append(f"{name}: the client's file name reached the storage name: {row.image_url!r}")
    new_files = sorted(set(stored_files()) - set(files_before))
    if new_files != [stored]:
        problems.append(f"{name}: expected the one stored image {stored}, found new files {new_files}")
    if case.secret:
        data = stored.read_bytes()
        for encoded in (
            case.secret.encode(),
            case.secret.encode("utf-16-le"),
            case.secret.split("^")[-1].encode(),
        ):
            if encoded in data:
                problems.append(f"{name}: patient data {encoded!r} is in the stored image")
        if case.secret in str(row.results_json) + str(row.heatmaps) + row.image_url:
            problems.append(f"{name}: patient data is in the audit row")
    return problems


def test_it_refuses_hostile_uploads_and_reads_odd_valid_ones(api, small_limits, starter_model, shared_data):
    cases = corpus.corpus(MAX_UPLOAD_MB * 1024 * 1024)
    # Over the request body limit too (refused before the body is read).
    cases.append(
        corpus.Case(
            "oversize-body", b"\x89PNG" + b"\x00" * (3 * 1024 * 1024), "refused", "huge.png", statuses=(413,)
        )
    )
    for path, expect in (
        (
            shared_data / "nhsx_nccid" / "sample_non_chest_OT.dcm",
            "either",
        ),  # an abdomen: an image, not a chest
        (shared_data / "pydicom_data" / "RG3_J2KI.dcm", "either"),  # a tibia, JPEG 2000
        (shared_data / "bob_med_tb" / "16bits.png", "valid"),
    ):
        if path.exists():
            cases.append(corpus.Case(f"shared:{path.name}", path.read_bytes(), expect, path.name))
    assert len(cases) >= 40

    problems, outcomes = [], []
    for case in cases:
        rows_before, files_before = Prediction.objects.count(), stored_files()
        started = time.perf_counter()
        response = post_image(api, case.data, case.filename)
        outcomes.append(f"{case.name}: {response.status_code} in {time.perf_counter() - started:.2f}s")
        if response.status_code >= 500:
            problems.append(f"{case.name}: {response.status_code} {response.content[:300]!r}")
        elif case.expect == "refused" or (case.expect == "either" and response.status_code != 201):
            problems += _check_refused(case.name, response, case.statuses, rows_before, files_before)
        else:
            problems += _check_valid(case, response, rows_before, files_before, starter_model.pk)

    # The server keeps serving: a real chest X-ray after the whole corpus.
    real = shared_data_path("nih_reproduce_chexnet", "images", "00000075_000.png")
    small_limits.LUNGSITE_MAX_UPLOAD_MB = 50
    small_limits.DATA_UPLOAD_MAX_MEMORY_SIZE = 51 * 1024 * 1024
    response = post_image(api, real.read_bytes(), real.name)
    assert response.status_code == 201, response.content[:300]
    assert problems == [], "\n".join(problems + ["", "all outcomes:"] + outcomes)


@pytest.fixture
def decode_spies(monkeypatch):
    """Records every pixel decode: Pillow's ImageFile.load, inference.png and OpenCV's imdecode
    (8-bit gray PNGs) and pydicom's Dataset.pixel_array."""
    import cv2
    import pydicom.dataset
    from PIL import ImageFile

    from inference import png

    calls: list[tuple[str, object]] = []
    original_load = ImageFile.ImageFile.load
    original_pixel_array = pydicom.dataset.Dataset.pixel_array
    original_imdecode = cv2.imdecode
    original_gray8 = png.decode_gray8

    def load(self, *args, **kwargs):
        calls.append(("pillow", self.size))
        return original_load(self, *args, **kwargs)

    def pixel_array(self):
        calls.append(("pydicom", (self.get("Columns"), self.get("Rows"))))
        return original_pixel_array.fget(self)

    def imdecode(buffer, flags):
        calls.append(("opencv", len(buffer)))
        return original_imdecode(buffer, flags)

    def decode_gray8(data, chunks, width, height):
        calls.append(("inference.png", (width, height)))
        return original_gray8(data, chunks, width, height)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(pixel_array))
    monkeypatch.setattr(cv2, "imdecode", imdecode)
    monkeypatch.setattr(png, "decode_gray8", decode_gray8)
    return calls


BOMBS = {
    "png-header-bomb-100000x100000": lambda: corpus.png_header_bomb(),
    "png-real-bomb-8000x8000": lambda: corpus.png_bomb(8000, 8000),
    "jpeg-header-bomb-65500x65500": lambda: corpus.jpeg_with_size(65500, 65500),
    "dicom-header-bomb-65535x65535": lambda: corpus.dicom(rows=65535, columns=65535, pixel_data=b"\x00" * 64),
    "dicom-frames-bomb": lambda: corpus.dicom(rows=4096, columns=4096, frames=1000, pixel_data=b"\x00" * 64),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_it_checks_the_pixel_count_before_decoding(api, decode_spies, name):
    data = BOMBS[name]()
    rows_before = Prediction.objects.count()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        response = post_image(api, data, name + ".bin")
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert response.status_code == 413, response.content[:300]
    assert error_of(response)["code"] == "too_many_pixels"
    assert decode_spies == [], f"pixels were decoded before the limit was checked: {decode_spies}"
    # 64 Mpx of uint8 would be 64 MB, as float32 256 MB; the request itself needs a few MB.
    assert peak < 32 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"
    assert elapsed < 5.0, f"took {elapsed:.1f}s"
    assert Prediction.objects.count() == rows_before
    assert stored_files() == []


def test_the_decode_spies_see_a_real_decode(api, decode_spies):
    """The control for the test above: a normal upload does go through the spied decoders."""
    from PIL import Image

    png = corpus.pil_bytes(Image.fromarray(corpus.chest_like(64)), "PNG")  # 8-bit gray: inference.png
    jpeg = corpus.pil_bytes(Image.fromarray(corpus.chest_like(64)), "JPEG")
    dcm = corpus.dicom(corpus.chest_like(64))
    assert post_image(api, png, "x.png").status_code == 201
    assert post_image(api, jpeg, "x.jpg").status_code == 201
    assert post_image(api, dcm, "x.dcm").status_code == 201
    assert {kind for kind, _ in decode_spies} == {"inference.png", "pillow", "pydicom"}


def test_it_refuses_requests_without_a_usable_file_field(api):
    from tests.reliability.conftest import PREDICTIONS_URL, multipart

    body, content_type = multipart("not_image", "x.png", b"\x89PNG")
    for response in (
        api.post(PREDICTIONS_URL, {}, format="multipart"),
        api.post(PREDICTIONS_URL, {"image": "just text"}, format="multipart"),
        api.post(PREDICTIONS_URL, data=body, content_type=content_type),
        api.post(PREDICTIONS_URL, {"image": "aGVsbG8="}, format="json"),
        api.post(
            PREDICTIONS_URL,
            data=b"--broken\r\nnot multipart",
            content_type="multipart/form-data; boundary=broken",
        ),
        api.post(PREDICTIONS_URL, data=b"\x89PNG raw body", content_type="image/png"),
    ):
        assert 400 <= response.status_code < 500, (response.status_code, response.content[:200])
        error_of(response)
    assert Prediction.objects.count() == 0
    assert stored_files() == []
