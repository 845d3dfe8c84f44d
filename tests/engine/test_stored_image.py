"""The stored copy, written by the decoding process: a lossless PNG of exactly the pixels the model
analysed, without the upload's other bytes; and the bounded-size derivative the pages draw from."""

import io

import numpy as np
import pytest
from PIL import Image

from engine import decode_pool, stored_image
from engine.decode import decode_gray
from tests.conftest import shared_data_path

LIMITS = {"timeout_s": 20, "max_mb": 2048}
NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")
CR_DICOM = ("pydicom_data", "RG1_UNCR.dcm")


@pytest.mark.parametrize("parts", [NIH_PNG, CR_DICOM])
def test_the_stored_copy_round_trips_the_analysed_pixels(parts):
    data = shared_data_path(*parts).read_bytes()
    pixels, copy = decode_pool.decode_with_stored_copy(data, max_pixels=60_000_000, **LIMITS)
    png = copy.result()
    assert np.array_equal(pixels, decode_gray(data))  # the raw bytes came back as the same array
    again = decode_gray(png)
    if pixels.dtype == np.uint8:
        assert again.dtype == np.uint8 and np.array_equal(again, pixels)
    else:
        assert np.abs(again - pixels).max() <= 0.5 / 65535 + 1e-7  # 16-bit: to 1/65535
    with Image.open(io.BytesIO(png)) as pil:
        assert pil.format == "PNG" and not pil.info.get("text") and "exif" not in pil.info
    for chunk in (b"tEXt", b"zTXt", b"iTXt", b"eXIf"):
        assert chunk not in png


def test_the_display_derivative_is_bounded_and_keeps_the_depth():
    data = shared_data_path(*CR_DICOM).read_bytes()
    png = decode_pool.decode_with_stored_copy(data, max_pixels=60_000_000, **LIMITS)[1].result()
    with Image.open(io.BytesIO(png)) as pil:
        assert stored_image.image_size(io.BytesIO(png)) == pil.size == (1841, 1955)
    levels, maximum = decode_pool.display_levels(png, max_side=512, **LIMITS)
    assert maximum == 65535 and levels.dtype == np.uint16
    assert max(levels.shape) == 512 and levels.shape == (512, round(1841 * 512 / 1955))
    full = (decode_gray(png) * 65535).astype(np.float64)
    assert abs(levels.mean() - full.mean()) < 0.01 * 65535  # an area average of the same picture


def test_an_unreadable_stored_copy_is_a_decode_error_not_a_crash():
    from engine.decode import DecodeError

    with pytest.raises(DecodeError):
        decode_pool.display_levels(b"\x89PNG\r\n\x1a\n broken", max_side=64, **LIMITS)
    # the pool still works afterwards
    levels, maximum = decode_pool.display_levels(
        stored_image.png_bytes(np.zeros((8, 8), np.uint8)), max_side=4, **LIMITS
    )
    assert levels.shape == (4, 4) and maximum == 255
