"""The hostile-upload corpus against POST /api/v1/predictions/ (docs/decoding.md).

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
    probabilities = [finding["score"] for finding in body.get("findings", [])]
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
    """Records every pixel decode in this process: Pillow's ImageFile.load and pydicom's
    Dataset.pixel_array. (A request decodes in a child process, which these cannot see: the tests
    below call engine.decode here for that, and send the same files through the API.)"""
    import pydicom.dataset
    from PIL import ImageFile

    calls: list[tuple[str, object]] = []
    original_load = ImageFile.ImageFile.load
    original_pixel_array = pydicom.dataset.Dataset.pixel_array

    def load(self, *args, **kwargs):
        calls.append(("pillow", self.size))
        return original_load(self, *args, **kwargs)

    def pixel_array(self):
        calls.append(("pydicom", (self.get("Columns"), self.get("Rows"))))
        return original_pixel_array.fget(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(pixel_array))
    return calls


BOMBS = {
    "png-header-bomb-100000x100000": (lambda: corpus.png_header_bomb(), "too_many_pixels"),
    "png-real-bomb-8000x8000": (lambda: corpus.png_bomb(8000, 8000), "too_many_pixels"),
    "png-8000000x1": (lambda: corpus.png_bomb(8_000_000, 1), "too_many_pixels"),
    "png-60000000x1": (lambda: corpus.png_header_bomb(60_000_000, 1), "too_many_pixels"),
    "png-20000x1000": (lambda: corpus.png_header_bomb(20_000, 1_000), "too_many_pixels"),
    "png-12000x1000": (lambda: corpus.png_header_bomb(12_000, 1_000), "unsupported_shape"),
    "jpeg-header-bomb-65500x65500": (lambda: corpus.jpeg_with_size(65500, 65500), "too_many_pixels"),
    "jpeg-last-scan-x3000": (lambda: corpus.jpeg_repeated_scans(3000), "too_many_scans"),
    "dicom-header-bomb-65535x65535": (
        lambda: corpus.dicom(rows=65535, columns=65535, pixel_data=b"\x00" * 64),
        "too_many_pixels",
    ),
    "dicom-frames-bomb": (
        lambda: corpus.dicom(rows=4096, columns=4096, frames=1000, pixel_data=b"\x00" * 64),
        "too_many_pixels",
    ),
    "dicom-deflate-1gib": (lambda: corpus.dicom_deflate_bomb(1 << 30), "too_many_pixels"),
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_it_checks_the_size_before_decoding(decode_spies, name):
    """engine.decode refuses each from its header (or, for the deflated DICOM, by inflating no
    further than the pixel limit allows): no pixel decoded, little memory, little time."""
    from engine import decode

    make, code = BOMBS[name]
    data = make()
    tracemalloc.start()
    try:
        started = time.perf_counter()
        with pytest.raises(decode.DecodeError) as info:
            decode.decode_gray(data, name, max_pixels=60_000_000)
        elapsed = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert info.value.code == code, str(info.value)
    assert decode_spies == [], f"pixels were decoded before the limit was checked: {decode_spies}"
    # 64 Mpx of uint8 would be 64 MB, as float32 256 MB; the deflated DICOM stops at its cap.
    assert peak < 32 * 1024 * 1024, f"peak traced memory {peak / 1e6:.1f} MB"
    assert elapsed < 5.0, f"took {elapsed:.1f}s"


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_it_refuses_the_same_files_through_the_api(api, name):
    make, code = BOMBS[name]
    started = time.perf_counter()
    response = post_image(api, make(), name + ".bin")
    elapsed = time.perf_counter() - started
    assert response.status_code in (413, 422), response.content[:300]
    assert error_of(response)["code"] == code
    assert elapsed < 10.0, f"took {elapsed:.1f}s"
    assert Prediction.objects.count() == 0
    assert stored_files() == []


def test_the_decode_spies_see_a_real_decode(decode_spies):
    """The control for the test above: a normal file does go through the spied decoders."""
    from PIL import Image

    from engine import decode

    png = corpus.pil_bytes(Image.fromarray(corpus.chest_like(64)), "PNG")
    jpeg = corpus.pil_bytes(Image.fromarray(corpus.chest_like(64)), "JPEG")
    dcm = corpus.dicom(corpus.chest_like(64))
    for data in (png, jpeg, dcm):
        assert decode.decode_gray(data).shape == (64, 64)
    assert {kind for kind, _ in decode_spies} == {"pillow", "pydicom"}


def test_a_decode_past_the_time_limit_is_stopped_with_a_422(api, settings):
    """The bound that holds whatever the file does: a real JPEG that needs longer than the limit
    (a limit made tiny here) is stopped, the request answers 422, and the next upload is served."""
    from PIL import Image

    settings.LUNGSITE_DECODE_TIMEOUT_S = 0.001
    big = corpus.pil_bytes(Image.fromarray(corpus.chest_like(2048)), "JPEG", quality=95, progressive=True)
    response = post_image(api, big, "slow.jpg")
    assert response.status_code == 422, response.content[:300]
    error = error_of(response)
    assert error["code"] == "decode_timeout" and "took longer" in error["message"]
    assert Prediction.objects.count() == 0 and stored_files() == []
    settings.LUNGSITE_DECODE_TIMEOUT_S = 20
    assert post_image(api, big, "again.jpg").status_code == 201


def test_a_decode_past_the_memory_limit_is_refused_with_a_422(api, settings):
    """A valid 40 Mpx PNG (allowed by the pixel limit) under a 200 MB cap (the decoding process's
    address space: its libraries and the 41 MB of pixels, decoded and sent back, need more): it
    runs out of memory, the request answers 422, nothing is written."""
    settings.LUNGSITE_DECODE_MAX_MB = 200
    response = post_image(api, corpus.png_bomb(6400, 6400), "big.png")
    assert response.status_code == 422, response.content[:300]
    assert error_of(response)["code"] == "decode_memory"
    assert Prediction.objects.count() == 0 and stored_files() == []


def test_it_stores_no_byte_of_the_upload_only_its_pixels(api):
    """The stored copy is a PNG written from the decoded pixels: the same picture, and none of the
    upload's chunks or segments (a hidden marker in any of them stays out)."""
    import io

    import numpy as np
    from PIL import Image

    from engine import decode

    for data, name in (
        (corpus.png_with_chunks(corpus.png_chunk(b"gAMA", b"\x00\x00\xb1\x8fCORPUS7Q")), "gama.png"),
        (corpus.jpeg_between_scans(corpus.jpeg_segment(0xFE, b"CORPUS7Q")) + b"CORPUS7Q", "com.jpg"),
    ):
        response = post_image(api, data, name)
        assert response.status_code == 201, response.content[:300]
        row = Prediction.objects.get(pk=response.json()["id"])
        with storages["xray_images"].open(row.image_url, "rb") as handle:
            stored = handle.read()
        assert b"CORPUS7Q" not in stored
        with Image.open(io.BytesIO(stored)) as png:
            assert png.format == "PNG" and png.mode == "L" and png.info == {}
        np.testing.assert_array_equal(decode.decode_gray(stored), decode.decode_gray(data))


def test_it_stores_a_16_bit_copy_of_a_16_bit_source(api):
    import io

    import numpy as np
    from PIL import Image

    from engine import decode

    data = corpus.dicom(corpus.chest_like(64).astype(np.uint16) * 250, patient_name=corpus.PATIENT)
    response = post_image(api, data, "sixteen.dcm")
    assert response.status_code == 201, response.content[:300]
    row = Prediction.objects.get(pk=response.json()["id"])
    with storages["xray_images"].open(row.image_url, "rb") as handle:
        stored = handle.read()
    with Image.open(io.BytesIO(stored)) as png:
        assert png.mode.startswith("I")  # 16-bit gray
    np.testing.assert_allclose(decode.decode(stored), decode.decode(data), atol=1 / 65535)


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
