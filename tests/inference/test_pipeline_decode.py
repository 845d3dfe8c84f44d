"""pipeline.decode on every real format in ../shared/data, the same picture in other containers,
and bad inputs (each refused with its code, before any pixel is decoded where it matters)."""

import csv
import io
import struct
import zlib

import cv2
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEGLSLossless, generate_uid

from inference.pipeline import DecodeError, decode, predict, preprocess
from inference.weights import load_model
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
    from inference.export import onnx_graph
    from inference.serving import ServingRuntime

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
    monkeypatch.setattr(cv2, "imdecode", refuse)
    monkeypatch.setattr("inference.png.decode_gray8", refuse)


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


@pytest.mark.parametrize(
    "parts",
    [
        ("nih_reproduce_chexnet", "images", "00000075_000.png"),
        ("nih_reproduce_chexnet", "images", "00000211_000.png"),
        ("nih_reproduce_chexnet", "images", "00004934_000.png"),  # RGBA: Pillow's path
        ("bob_med_tb", "16bits.png"),  # 16-bit: Pillow's path
    ],
    ids=lambda p: p[-1],
)
def test_8_bit_gray_pngs_take_the_fast_decoder_and_give_pillows_pixels(parts, monkeypatch):
    from inference import pipeline, png

    data = shared_data_path(*parts).read_bytes()
    with Image.open(io.BytesIO(data)) as pil:
        eight_bit_gray = pil.mode == "L"
    calls = []
    original = png.decode_gray8
    monkeypatch.setattr(png, "decode_gray8", lambda *args: calls.append(1) or original(*args))
    monkeypatch.setattr(cv2, "imdecode", lambda *args: pytest.fail("OpenCV decoded what the fast path reads"))
    gray = pipeline.decode_gray(data)
    assert bool(calls) == eight_bit_gray
    monkeypatch.undo()
    if eight_bit_gray:  # OpenCV, the fallback, gives the same pixels
        monkeypatch.setattr(png, "decode_gray8", lambda *args: None)
        np.testing.assert_array_equal(pipeline.decode_gray(data), gray)
        monkeypatch.undo()
    reference = pipeline._decode_pillow(data, "", pipeline.DEFAULT_MAX_PIXELS)  # Pillow only
    assert gray.dtype == reference.dtype and gray.shape == reference.shape
    np.testing.assert_array_equal(gray, reference)
    # decode() is the same picture as floats in [0, 1]
    np.testing.assert_allclose(decode(data), pipeline.as_float(gray), atol=0)
    if eight_bit_gray:
        assert gray.dtype == np.uint8
        np.testing.assert_allclose(decode(data) * 255.0, gray, atol=1e-4)


def test_preprocess_gives_the_same_input_from_8_bit_values_as_from_floats():
    from inference.pipeline import decode_gray
    from registry.models import DEFAULT_PREPROCESSING

    data = shared_data_path(*NIH_PNG).read_bytes()
    from_uint8 = preprocess(decode_gray(data), DEFAULT_PREPROCESSING)
    from_float = preprocess(decode(data), DEFAULT_PREPROCESSING)
    assert from_uint8.shape == (1, 3, 224, 224) and from_uint8.dtype == np.float32
    np.testing.assert_allclose(from_uint8, from_float, atol=2e-5)
