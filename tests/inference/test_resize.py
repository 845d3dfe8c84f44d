"""inference.resize, the resize to the model's input size: Pillow's pixels on every real X-ray, and
Pillow's values to float32 rounding on any size, up or down."""

import numpy as np
import pytest
from PIL import Image

from inference import pipeline, resize
from tests.conftest import SHARED_DATA


def _pillow(image: np.ndarray, width: int, height: int) -> np.ndarray:
    plane = Image.fromarray(image)
    if image.dtype == np.uint8:
        plane = plane.convert("F")
    return np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR))


def test_every_real_image_resizes_to_pillows_exact_pixels():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found: {SHARED_DATA} (the ../shared/data folder is absent)")
    compared = set()
    for path in sorted(SHARED_DATA.rglob("*")):
        if not path.is_file() or path.suffix.lower() in {".md", ".csv", ".json", ".txt"}:
            continue
        try:
            image = pipeline.decode_gray(path.read_bytes(), path.name)
        except pipeline.DecodeError:
            continue  # the data folder keeps some files that are not readable X-rays on purpose
        got = resize.bilinear(image, 224, 224)
        assert got.dtype == np.float32 and got.shape == (224, 224)
        np.testing.assert_array_equal(got, _pillow(image, 224, 224), err_msg=path.name)
        compared.add((image.dtype.str, image.shape))
    assert len(compared) >= 10  # 8-bit and float images of many sizes (NIH PNGs, JPEGs, DICOM)
    assert {dtype for dtype, _ in compared} == {np.dtype(np.uint8).str, np.dtype(np.float32).str}


@pytest.mark.parametrize("dtype", [np.uint8, np.float32])
def test_any_size_up_or_down_gives_pillows_values(dtype):
    """Both passes are Pillow's sums in Pillow's order. Pillow 13 runs the column pass first for
    some shapes (not for the square X-rays above); there the values may differ by one rounding of
    the float32 in between, never more."""
    rng = np.random.default_rng(7)
    for _ in range(60):
        height, width = rng.integers(1, 700, size=2)
        out_height, out_width = rng.integers(1, 300, size=2)
        image = rng.random((height, width))
        image = (image * 255).astype(np.uint8) if dtype == np.uint8 else image.astype(np.float32)
        got = resize.bilinear(image, int(out_width), int(out_height))
        want = _pillow(image, int(out_width), int(out_height))
        assert got.shape == want.shape == (out_height, out_width)
        top = 255.0 if dtype == np.uint8 else 1.0
        np.testing.assert_allclose(got, want, rtol=0, atol=top * 2.4e-7)


def test_one_pass_alone_is_exact_and_the_same_size_is_a_copy():
    rng = np.random.default_rng(3)
    image = (rng.random((300, 200)) * 255).astype(np.uint8)
    np.testing.assert_array_equal(resize.bilinear(image, 224, 300), _pillow(image, 224, 300))
    np.testing.assert_array_equal(resize.bilinear(image, 200, 224), _pillow(image, 200, 224))
    same = resize.bilinear(image, 200, 300)
    assert same.dtype == np.float32
    np.testing.assert_array_equal(same, image.astype(np.float32))
    floats = image.astype(np.float32)
    copy = resize.bilinear(floats, 200, 300)
    assert copy is not floats and np.shares_memory(copy, floats) is False


def test_warm_up_compiles_every_kernel_that_uploads_use():
    kernels = (resize._coefficients, resize._rows, resize._columns)
    resize.warm_up()
    compiled = [len(kernel.signatures) for kernel in kernels]
    rng = np.random.default_rng(5)
    writable = (rng.random((40, 50)) * 255).astype(np.uint8)
    read_only = np.frombuffer(writable.tobytes(), dtype=np.uint8).reshape(40, 50)  # as Pillow's arrays
    floats = writable.astype(np.float32)
    read_only_floats = floats.copy()
    read_only_floats.flags.writeable = False
    for image in (writable, read_only, floats, read_only_floats):
        resize.bilinear(image, 24, 24)
    assert [len(kernel.signatures) for kernel in kernels] == compiled


def test_preprocess_matches_the_pillow_resize_it_replaced():
    """The model input as it was made before this module: Pillow's resize, / 255, normalised."""
    rng = np.random.default_rng(11)
    image = (rng.random((1024, 1024)) * 255).astype(np.uint8)
    spec = {"input_size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    plane = _pillow(image, 224, 224) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(pipeline.preprocess(image, spec), ((plane[None] - mean) / std)[None])
