"""engine.decode on every real format in ../shared/data, the same picture in other containers,
and bad inputs (each refused with its code, before any pixel is decoded where it matters)."""

import csv
import io
import struct
import zlib

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, generate_uid

from engine.decode import DecodeError, as_float, decode, decode_gray
from engine.pipeline import predict, preprocess
from engine.weights import load_model
from registry.models import DEFAULT_PREPROCESSING
from tests.conftest import SHARED_DATA, shared_data_path, starter_weights_bytes

NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")
NIH_RGBA = ("nih_reproduce_chexnet", "images", "00004934_000.png")
SIIM_DCM = ("torchxrayvision_tests", "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm")
FAKE_MONO1 = ("torchxrayvision_tests", "Fake_MONOHR1.dcm")


def _manifest_rows() -> list[dict]:
    path = SHARED_DATA / "manifest.csv"
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    # Every file that is not one of the 250 NIH PNGs, plus a few of those (including both RGBA).
    others = [r for r in rows if not r["path"].startswith("nih_reproduce_chexnet/")]
    nih = [r for r in rows if r["path"].startswith("nih_reproduce_chexnet/") and r["format"] == "PNG"]
    return others + [r for r in nih if r["mode"] == "RGBA"] + nih[:3]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model():
    from engine.export import onnx_graph
    from engine.serving import ServingRuntime

    network = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    return ServingRuntime.from_graph(onnx_graph(network, "densenet121", 224), 224, threads=1)


def _probabilities(model, image: np.ndarray) -> np.ndarray:
    return predict(model, preprocess(image, DEFAULT_PREPROCESSING)).probabilities


def _png(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def _png_from(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def _raw_png(width: int, height: int, bit_depth: int, colour_type: int, raw_rows: bytes | None) -> bytes:
    """A PNG written by hand (Pillow cannot write 48-bit RGB, nor lie about its size)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, bit_depth, colour_type, 0, 0, 0)
    idat = zlib.compress(raw_rows if raw_rows is not None else b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _dicom(
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    bits_stored: int | None = None,
    file_meta: bool = True,
    syntax=ExplicitVRLittleEndian,
    **tags,
) -> bytes:
    """A DICOM file holding `pixels` (uint8 or uint16), built with pydicom."""
    ds = Dataset()
    ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation
    ds.SOPInstanceUID = generate_uid()
    ds.PatientName = "Test^Patient"
    ds.PatientID = "TEST-123"
    ds.Modality = "DX"
    ds.Rows, ds.Columns = pixels.shape[:2]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = pixels.dtype.itemsize * 8
    ds.BitsStored = bits_stored or ds.BitsAllocated
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    for key, value in tags.items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    buffer = io.BytesIO()
    if file_meta:
        ds.file_meta = FileMetaDataset()
        ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        ds.file_meta.TransferSyntaxUID = syntax
        ds.save_as(buffer, enforce_file_format=True)
    else:  # ACR-NEMA style: no preamble, no File Meta, implicit VR little endian
        pydicom.dcmwrite(buffer, ds, implicit_vr=True, little_endian=True)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Every real file


@pytest.mark.parametrize("row", _manifest_rows(), ids=lambda r: r["path"].split("/")[-1][:40])
def test_it_decodes_every_real_file(row):
    data = shared_data_path(*row["path"].split("/")).read_bytes()
    image = decode(data, row["path"])
    assert image.dtype == np.float32 and image.ndim == 2
    assert image.shape == (int(float(row["rows"])), int(float(row["cols"])))
    assert np.isfinite(image).all()
    assert 0.0 <= image.min() < image.max() <= 1.0


def test_it_reads_by_content_not_by_name():
    data = shared_data_path(*SIIM_DCM).read_bytes()
    assert np.array_equal(decode(data, "x.png"), decode(data, "x.dcm"))


def test_it_inverts_monochrome1():
    original = decode(shared_data_path(*SIIM_DCM).read_bytes())
    fake = decode(shared_data_path(*FAKE_MONO1).read_bytes())
    np.testing.assert_allclose(fake, 1.0 - original, atol=1e-6)


def test_it_reads_dicom_without_file_meta_and_inverts_it():
    data = shared_data_path("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm").read_bytes()
    assert data[128:132] != b"DICM"
    image = decode(data)
    assert image.shape == (440, 440)
    raw = pydicom.dcmread(io.BytesIO(data), force=True)
    raw.file_meta = FileMetaDataset()
    raw.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian
    stored = raw.pixel_array.astype(np.float64)
    # MONOCHROME1: high stored values are dark, so the decoded image runs against them.
    assert np.corrcoef(stored.ravel(), image.ravel())[0, 1] < -0.99


def test_it_decodes_jpeg2000_like_the_uncompressed_original(model):
    uncompressed = decode(shared_data_path("pydicom_data", "RG1_UNCR.dcm").read_bytes())
    j2k = decode(shared_data_path("pydicom_data", "RG1_J2KI.dcm").read_bytes())
    assert uncompressed.shape == j2k.shape == (1955, 1841)
    assert float(np.abs(uncompressed - j2k).mean()) < 0.005
    diff = np.abs(_probabilities(model, uncompressed) - _probabilities(model, j2k)).max()
    assert diff < 5e-3


def test_it_reads_the_16_bit_png():
    data = shared_data_path("bob_med_tb", "16bits.png").read_bytes()
    image = decode(data)
    raw = np.asarray(Image.open(io.BytesIO(data)), dtype=np.float64)
    np.testing.assert_allclose(image, raw / 65535.0, atol=1e-6)
    assert image.max() == pytest.approx(63085 / 65535, abs=1e-6)


def test_it_reads_rgba_like_its_gray_channel():
    data = shared_data_path(*NIH_RGBA).read_bytes()
    with Image.open(io.BytesIO(data)) as pil:
        assert pil.mode == "RGBA"
        expected = np.asarray(pil.convert("RGB"), dtype=np.float64)
    image = decode(data)
    luma = expected @ np.array([0.299, 0.587, 0.114]) / 255.0
    np.testing.assert_allclose(image, luma, atol=1e-5)


# --------------------------------------------------------------------------------------------
# The same picture in other containers


@pytest.fixture(scope="module")
def nih_pixels() -> np.ndarray:
    data = shared_data_path(*NIH_PNG).read_bytes()
    with Image.open(io.BytesIO(data)) as pil:
        assert pil.mode == "L"
        return np.asarray(pil, dtype=np.uint8)


def _same_picture_variants(pixels: np.ndarray) -> dict[str, bytes]:
    height, width = pixels.shape
    wide = pixels.astype(np.uint16) * 257
    rgb = np.stack([pixels] * 3, axis=-1)
    rgb48_rows = b"".join(
        b"\x00" + np.stack([wide[y]] * 3, axis=-1).astype(">u2").tobytes() for y in range(height)
    )
    palette = Image.frombytes("P", (width, height), pixels.tobytes())
    palette.putpalette([v for g in range(256) for v in (g, g, g)])
    la = Image.merge("LA", [Image.fromarray(pixels), Image.new("L", (width, height), 255)])
    buffer = io.BytesIO()
    la.save(buffer, format="PNG")
    la_png = buffer.getvalue()
    return {
        "png16": _png(wide),
        "png_rgb": _png(rgb),
        "png_rgb48": _raw_png(width, height, 16, 2, rgb48_rows),
        "png_la": la_png,
        "png_palette": _png_from(palette),
        "png_with_text": _png(pixels, pnginfo=_pnginfo()),
        "dicom8": _dicom(pixels),
        "dicom8_no_meta": _dicom(pixels, file_meta=False),
        "dicom8_monochrome1": _dicom(255 - pixels, photometric="MONOCHROME1"),
        "dicom12_window": _dicom(
            pixels.astype(np.uint16) * 16,
            bits_stored=12,
            # The linear window that maps stored 0 -> 0 and 4080 -> 1 (PS3.3 C.11.2.1.2.1).
            WindowCenter=2040.5,
            WindowWidth=4081,
        ),
        "dicom16_rescale": _dicom(wide, bits_stored=16, RescaleSlope=1, RescaleIntercept=0),
    }


def _pnginfo():
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    info.add_text("PatientName", "Doe^Jane")
    return info


def test_it_gives_the_same_image_in_every_lossless_container(nih_pixels):
    reference = decode(_png(nih_pixels))
    assert np.array_equal(reference, nih_pixels.astype(np.float32) / 255.0)
    for name, data in _same_picture_variants(nih_pixels).items():
        image = decode(data, name)
        assert image.shape == reference.shape, name
        assert float(np.abs(image - reference).max()) < 2e-3, name


def test_it_gives_the_same_probabilities_for_a_16_bit_copy(model, nih_pixels):
    p8 = _probabilities(model, decode(_png(nih_pixels)))
    p16 = _probabilities(model, decode(_png(nih_pixels.astype(np.uint16) * 257)))
    assert np.abs(p8 - p16).max() < 2e-3


def test_it_gives_close_probabilities_for_jpeg_and_dicom_copies(model, nih_pixels):
    reference = _probabilities(model, decode(_png(nih_pixels)))
    buffer = io.BytesIO()
    Image.fromarray(nih_pixels).save(buffer, format="JPEG", quality=95)
    jpeg = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(nih_pixels).save(buffer, format="JPEG", quality=95, progressive=True)
    progressive = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(nih_pixels).convert("CMYK").save(buffer, format="JPEG", quality=95)
    cmyk = buffer.getvalue()
    for name, data, tolerance in (
        ("jpeg_q95", jpeg, 5e-3),
        ("jpeg_progressive", progressive, 5e-3),
        ("jpeg_cmyk", cmyk, 5e-3),
        ("dicom8", _dicom(nih_pixels), 2e-3),
        ("dicom8_monochrome1", _dicom(255 - nih_pixels, photometric="MONOCHROME1"), 2e-3),
        ("dicom16", _dicom(nih_pixels.astype(np.uint16) * 257, bits_stored=16), 2e-3),
    ):
        diff = np.abs(_probabilities(model, decode(data, name)) - reference).max()
        assert diff < tolerance, (name, diff)


def test_it_gives_no_nan_for_a_constant_image(model):
    for data in (
        _png(np.full((64, 80), 128, np.uint8)),
        _png(np.zeros((64, 64), np.uint16)),
        _dicom(np.full((32, 32), 7, np.uint16), bits_stored=12),
        _dicom(np.full((32, 32), 7, np.uint16), bits_stored=12, WindowCenter=7, WindowWidth=1),
    ):
        image = decode(data)
        assert np.isfinite(image).all()
        output = predict(model, preprocess(image, DEFAULT_PREPROCESSING))
        assert np.isfinite(output.probabilities).all() and np.isfinite(output.cams).all()


def test_it_takes_the_first_frame_of_a_multiframe_dicom():
    frames = np.stack([np.full((16, 16), 10, np.uint8), np.full((16, 16), 200, np.uint8)])
    ds_bytes = _dicom(frames.reshape(32, 16))  # build, then declare two frames of 16x16
    ds = pydicom.dcmread(io.BytesIO(ds_bytes))
    ds.Rows, ds.NumberOfFrames = 16, 2
    buffer = io.BytesIO()
    ds.save_as(buffer)
    image = decode(buffer.getvalue())
    assert image.shape == (16, 16)
    np.testing.assert_allclose(image, 10 / 255, atol=1e-6)


def test_it_decodes_a_non_chest_dicom():
    image = decode(shared_data_path("nhsx_nccid", "sample_non_chest_OT.dcm").read_bytes())
    assert image.shape == (512, 512)


# --------------------------------------------------------------------------------------------
# Bad inputs


def _refused(data: bytes, **kwargs) -> DecodeError:
    with pytest.raises(DecodeError) as info:
        decode(data, **kwargs)
    assert str(info.value)  # a message a person can read
    return info.value


@pytest.fixture
def no_pixel_decoding(monkeypatch):
    """Fails the test if any pixel data gets decoded."""
    from PIL import ImageFile

    def refuse(*args, **kwargs):
        raise AssertionError("pixels were decoded")

    monkeypatch.setattr(ImageFile.ImageFile, "load", refuse)
    monkeypatch.setattr(pydicom.dataset.Dataset, "pixel_array", property(refuse))


def test_it_refuses_empty_and_text(no_pixel_decoding):
    assert _refused(b"").code == "empty"
    error = _refused(b"patient: Jane Doe\nthis is a text file\n" * 10)
    assert (error.code, error.status) == ("not_an_image", 415)


def test_it_refuses_forced_dicom_parses_of_garbage(no_pixel_decoding):
    # Starts like an ACR-NEMA tag, so pydicom is asked with force=True; it must not "succeed".
    error = _refused(b"\x08\x00\x05\x00" + bytes(range(256)) * 4)
    assert error.status in (400, 415)


def test_it_refuses_a_truncated_png():
    data = shared_data_path(*NIH_PNG).read_bytes()
    error = _refused(data[: len(data) // 2])
    assert (error.code, error.status) == ("truncated", 400)


def test_it_refuses_a_truncated_jpeg():
    data = shared_data_path("kermany_pneumonia_model_package", "NORMAL2-IM-1430-0001.jpeg").read_bytes()
    error = _refused(data[: len(data) // 3])
    assert (error.code, error.status) == ("truncated", 400)


def test_it_refuses_a_truncated_dicom():
    data = shared_data_path("pydicom_data", "RG1_UNCR.dcm").read_bytes()
    error = _refused(data[: len(data) // 2])
    assert error.status == 400


def test_it_refuses_a_png_pixel_bomb_before_decoding(no_pixel_decoding):
    error = _refused(_raw_png(100_000, 100_000, 8, 0, None))
    assert (error.code, error.status) == ("too_many_pixels", 413)
    assert "100000x100000" in str(error)


def test_it_refuses_beyond_pillows_own_bomb_limit(no_pixel_decoding):
    # Larger than 2 x Image.MAX_IMAGE_PIXELS: Pillow raises on open; still our 413.
    error = _refused(_raw_png(40_000, 40_000, 8, 0, None), max_pixels=10**10)
    assert (error.code, error.status) == ("too_many_pixels", 413)


def test_it_refuses_a_jpeg_pixel_bomb_before_decoding(no_pixel_decoding):
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="JPEG")
    data = bytearray(buffer.getvalue())
    sof = data.index(b"\xff\xc0")
    data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
    error = _refused(bytes(data))
    assert (error.code, error.status) == ("too_many_pixels", 413)


def test_it_refuses_a_dicom_pixel_bomb_before_decoding(no_pixel_decoding):
    ds = pydicom.dcmread(io.BytesIO(_dicom(np.zeros((4, 4), np.uint8))))
    ds.Rows = ds.Columns = 60000
    buffer = io.BytesIO()
    ds.save_as(buffer)
    error = _refused(buffer.getvalue())
    assert (error.code, error.status) == ("too_many_pixels", 413)


def test_it_honours_a_smaller_pixel_limit(no_pixel_decoding):
    error = _refused(_png(np.zeros((100, 100), np.uint8)), max_pixels=9_999)
    assert error.code == "too_many_pixels"


def test_it_refuses_a_dicom_without_pixel_data(no_pixel_decoding):
    ds = pydicom.dcmread(io.BytesIO(_dicom(np.zeros((4, 4), np.uint8))))
    del ds.PixelData
    buffer = io.BytesIO()
    ds.save_as(buffer)
    error = _refused(buffer.getvalue())
    assert (error.code, error.status) == ("dicom_no_pixels", 400)


def test_it_refuses_an_unsupported_transfer_syntax(no_pixel_decoding):
    if pydicom.pixels.get_decoder(JPEGLSLossless).is_available:
        pytest.skip("a JPEG-LS plugin is installed here")
    ds = pydicom.dcmread(io.BytesIO(_dicom(np.zeros((4, 4), np.uint8))))
    ds.file_meta.TransferSyntaxUID = JPEGLSLossless
    ds.PixelData = pydicom.encaps.encapsulate([b"\xff\xd8\xff\xf7" + b"\x00" * 20])
    buffer = io.BytesIO()
    ds.save_as(buffer)
    error = _refused(buffer.getvalue())
    assert (error.code, error.status) == ("unsupported_transfer_syntax", 415)
    assert "JPEG-LS" in str(error)


def test_it_refuses_other_image_formats_by_name():
    buffer = io.BytesIO()
    Image.new("L", (8, 8)).save(buffer, format="GIF")
    error = _refused(buffer.getvalue())
    assert (error.code, error.status) == ("unsupported_format", 415)
    assert "GIF" in str(error)


def test_it_applies_rescale_then_window():
    stored = np.array([[0, 100, 200, 300]], dtype=np.uint16).repeat(4, axis=0)
    # Rescale to -1000..-400 (CT-like units), then a window of centre -700, width 201.
    data = _dicom(
        stored, bits_stored=12, RescaleSlope=2, RescaleIntercept=-1000, WindowCenter=-700, WindowWidth=201
    )
    image = decode(data)
    units = stored * 2.0 - 1000
    expected = np.clip((units - (-700 - 0.5)) / 200 + 0.5, 0, 1)
    np.testing.assert_allclose(image, expected, atol=1e-6)
    assert image[0, 0] == 0.0 and image[0, 3] == 1.0


def test_it_applies_a_voi_lut_sequence():
    stored = np.arange(256, dtype=np.uint8).reshape(16, 16)
    data = _dicom(stored)
    ds = pydicom.dcmread(io.BytesIO(data))
    item = Dataset()
    item.LUTDescriptor = [256, 0, 8]
    item.add_new(0x00283006, "US", [255 - v for v in range(256)])  # LUT Data: an inverting LUT
    ds.VOILUTSequence = [item]
    buffer = io.BytesIO()
    ds.save_as(buffer)
    np.testing.assert_allclose(decode(buffer.getvalue()), 1.0 - stored / 255.0, atol=1e-6)


def test_it_scales_signed_pixels_by_their_range():
    stored = np.array([[-2048, 0, 2047, 0]], dtype=np.int16).repeat(4, axis=0)
    ds = pydicom.dcmread(io.BytesIO(_dicom(stored.view(np.uint16), bits_stored=12)))
    ds.PixelRepresentation = 1
    buffer = io.BytesIO()
    ds.save_as(buffer)
    image = decode(buffer.getvalue())
    np.testing.assert_allclose(image[0], [0.0, 2048 / 4095, 1.0, 2048 / 4095], atol=1e-6)


def test_it_gives_pillows_pixels_for_every_real_png():
    """Pillow decodes every PNG (as the numba decoder this replaced did, to the byte): 8-bit gray
    ones as their uint8 values, and decode() is the same picture as floats in [0, 1]."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found: {SHARED_DATA} (the ../shared/data folder is absent)")
    eight_bit = other = 0
    for path in sorted(SHARED_DATA.rglob("*.png")):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as pil:
            mode, reference = pil.mode, np.asarray(pil)
        gray = decode_gray(data)
        if mode == "L":
            assert gray.dtype == np.uint8 and gray.flags.c_contiguous
            np.testing.assert_array_equal(gray, reference, err_msg=path.name)
            np.testing.assert_allclose(decode(data) * 255.0, gray, atol=1e-4)
            eight_bit += 1
        else:
            assert gray.dtype == np.float32 and gray.shape == reference.shape[:2], path.name
            other += 1
        np.testing.assert_array_equal(decode(data), as_float(gray))
    assert eight_bit >= 200 and other >= 1  # the 250 NIH PNGs are almost all 8-bit gray


def _paeth(left: int, above: int, upper_left: int) -> int:
    p = left + above - upper_left
    pa, pb, pc = abs(p - left), abs(p - above), abs(p - upper_left)
    if pa <= pb and pa <= pc:
        return left
    return above if pb <= pc else upper_left


def _filtered(pixels: np.ndarray, kinds: list[int]) -> bytes:
    """The PNG filter stream of `pixels` with row y filtered by kinds[y % len(kinds)], written
    straight from the specification (PNG 2nd ed., section 9)."""
    height, width = pixels.shape
    out = bytearray()
    for y in range(height):
        kind = kinds[y % len(kinds)]
        out.append(kind)
        for x in range(width):
            value = int(pixels[y, x])
            left = int(pixels[y, x - 1]) if x else 0
            above = int(pixels[y - 1, x]) if y else 0
            upper_left = int(pixels[y - 1, x - 1]) if x and y else 0
            predicted = (0, left, above, (left + above) // 2, _paeth(left, above, upper_left))[kind]
            out.append((value - predicted) & 255)
    return bytes(out)


@pytest.mark.parametrize("kinds", [[0], [1], [2], [3], [4], [4, 3, 2, 1, 0]], ids=lambda k: str(k))
@pytest.mark.parametrize("shape", [(37, 53), (1, 19), (23, 3), (300, 13)], ids=lambda s: f"{s[0]}x{s[1]}")
def test_it_reverses_every_row_filter(kinds, shape):
    rng = np.random.default_rng(sum(shape) + len(kinds))
    # Noise, plus smooth gradients and flat runs, where the Paeth predictor's ties are decided.
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    gradient = np.add.outer(np.arange(shape[0] // 2), np.arange(shape[1])) * 7 % 256
    pixels[: shape[0] // 2] = gradient.astype(np.uint8)
    pixels[:, : shape[1] // 3] = 200
    data = _raw_png(shape[1], shape[0], 8, 0, _filtered(pixels, kinds))
    np.testing.assert_array_equal(decode_gray(data), pixels)


def test_preprocess_resizes_with_pillow():
    """The model input: Pillow's antialiased bilinear resize of the picture as floats, / 255,
    normalised, exactly (8-bit pictures are resized before they are divided)."""
    rng = np.random.default_rng(11)
    image = (rng.random((1024, 1024)) * 255).astype(np.uint8)
    spec = {"input_size": 224, "channels": 3, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
    plane = Image.fromarray(image).convert("F").resize((224, 224), Image.Resampling.BILINEAR)
    plane = np.asarray(plane) * np.float32(1.0 / 255.0)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(3, 1, 1)
    np.testing.assert_array_equal(preprocess(image, spec), ((plane[None] - mean) / std)[None])


def test_preprocess_gives_the_same_input_from_8_bit_values_as_from_floats():
    data = shared_data_path(*NIH_PNG).read_bytes()
    from_uint8 = preprocess(decode_gray(data), DEFAULT_PREPROCESSING)
    from_float = preprocess(decode(data), DEFAULT_PREPROCESSING)
    assert from_uint8.shape == (1, 3, 224, 224) and from_uint8.dtype == np.float32
    np.testing.assert_allclose(from_uint8, from_float, atol=2e-5)


# --------------------------------------------------------------------------------------------
# Limits checked from the headers, before the expensive step


def test_it_refuses_a_jpeg_with_thousands_of_scans_before_decoding(no_pixel_decoding):
    from tests.reliability import corpus

    error = _refused(corpus.jpeg_repeated_scans(3000))
    assert (error.code, error.status) == ("too_many_scans", 422)
    assert "3" in str(error) and "scans" in str(error)


def test_it_reads_progressive_jpegs_as_encoders_write_them(nih_pixels):
    for image in (Image.fromarray(nih_pixels), Image.fromarray(nih_pixels).convert("RGB")):
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG", quality=90, progressive=True)
        assert 1 < buffer.getvalue().count(b"\xff\xda") <= 10
        assert decode(buffer.getvalue()).shape == nih_pixels.shape


@pytest.mark.parametrize(
    ("width", "height", "code", "status"),
    [
        (8_000_000, 1, "too_many_pixels", 413),  # a side past MAX_SIDE
        (60_000_000, 1, "too_many_pixels", 413),  # the pixel count alone would allow it
        (1, 20_000, "too_many_pixels", 413),
        (12_000, 1_000, "unsupported_shape", 422),  # 12:1
        (3, 5_000, "unsupported_shape", 422),
    ],
)
def test_it_refuses_extreme_shapes_from_the_png_header(no_pixel_decoding, width, height, code, status):
    from tests.reliability import corpus

    error = _refused(
        corpus.png_bomb(width, height) if width * height <= 10**7 else _raw_png(width, height, 8, 0, None)
    )
    assert (error.code, error.status) == (code, status)
    assert f"{width}x{height}" in str(error)


def test_it_refuses_a_deflated_dicom_that_inflates_past_its_pixels():
    import tracemalloc

    from tests.reliability import corpus

    data = corpus.dicom_deflate_bomb(1 << 30)
    assert len(data) < 2 * 1024 * 1024
    tracemalloc.start()
    try:
        error = _refused(data, max_pixels=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert (error.code, error.status) == ("too_many_pixels", 413)
    assert "inflates" in str(error)
    assert peak < 64 * 1024 * 1024  # stopped at the cap (1 Mpx x 4 bytes + 16 MB), not at 1 GiB


def test_it_reads_a_deflated_dicom(nih_pixels):
    from pydicom.uid import DeflatedExplicitVRLittleEndian

    data = _dicom(nih_pixels, syntax=DeflatedExplicitVRLittleEndian)
    np.testing.assert_allclose(decode(data), nih_pixels / 255.0, atol=1e-6)


def test_it_refuses_burned_in_annotation_unless_allowed():
    data = _dicom(np.full((16, 16), 9, np.uint8), BurnedInAnnotation="YES")
    error = _refused(data)
    assert (error.code, error.status) == ("burned_in_annotation", 422)
    assert "BurnedInAnnotation" in str(error)
    assert decode(data, allow_burned_in_annotation=True).shape == (16, 16)
    assert decode(_dicom(np.full((16, 16), 9, np.uint8), BurnedInAnnotation="NO")).shape == (16, 16)


def test_it_says_dicom_no_pixels_for_empty_pixel_data(no_pixel_decoding):
    ds = pydicom.dcmread(io.BytesIO(_dicom(np.zeros((4, 4), np.uint8))))
    ds.PixelData = b""
    buffer = io.BytesIO()
    ds.save_as(buffer)
    error = _refused(buffer.getvalue())
    assert (error.code, error.status) == ("dicom_no_pixels", 400)
    assert "TypeError" not in str(error)
