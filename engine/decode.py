"""Uploaded bytes -> one grayscale picture: PNG and JPEG by Pillow, DICOM by pydicom. No Django here.

Shapes:
    decode      bytes -> (H, W) float32 in [0, 1]
    decode_gray bytes -> (H, W) uint8 (8-bit gray sources) or float32 in [0, 1]

A hostile file can declare anything, so what makes decoding expensive is checked from the headers
before the expensive step, for every format: the pixel count (frames included), the longest side and
the aspect ratio (an 8,000,000x1 PNG is a few KB), the number of JPEG scans (each progressive scan
is another pass over every coefficient), and how far a deflated DICOM may inflate. What the
libraries still do with a file that passes is bounded in time and memory by
`engine.decode_pool`, which runs these functions in a child process.
"""

from __future__ import annotations

import io
import struct
import warnings
import zlib

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from common.errors import Refused
from engine import dicom_checks

DEFAULT_MAX_PIXELS = 60_000_000
# The longest side and the most elongated shape accepted. Chest plates are about 1:1.25, long-leg
# and spine stitches about 1:4; past these the resize to the model's input costs more than the
# picture is worth (Pillow's filter taps grow with the side), and no radiograph looks like that.
MAX_SIDE = 16_384
MAX_ASPECT_RATIO = 10
ASPECT_CHECKED_FROM = 1024  # a smaller picture is cheap whatever its shape (icons, test strips)
# libjpeg's progressive mode writes 6 scans for gray and 10 for colour, optimisers a few more; a
# file with hundreds makes the decoder pass over every coefficient hundreds of times.
MAX_JPEG_SCANS = 100
# A deflated DICOM may inflate to this many bytes per allowed pixel (16-bit samples, with room for
# the header and overlays), plus a little for the header of a small image.
DEFLATED_BYTES_PER_PIXEL = 4
DEFLATED_HEADER_BYTES = 16 * 1024 * 1024
# Inflated first, to read Rows, Columns, ... and so how much the rest may inflate to.
_DEFLATED_HEAD_BYTES = 1024 * 1024

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
_JPEG_SOS = b"\xff\xda"
# Formats decoded through Pillow. Others that Pillow recognises are refused by name.
_PIL_FORMATS = ("PNG", "JPEG")
# Transfer syntaxes whose frames are JPEG streams (pydicom hands them to Pillow or pylibjpeg).
_DICOM_JPEG_SYNTAXES = (
    "1.2.840.10008.1.2.4.50",  # Baseline
    "1.2.840.10008.1.2.4.51",  # Extended
    "1.2.840.10008.1.2.4.57",  # Lossless
    "1.2.840.10008.1.2.4.70",  # Lossless SV1
)
_DEFLATED = "1.2.840.10008.1.2.1.99"


class DecodeError(Refused):
    """An upload that is not a usable image. `code` is a stable identifier, `status` the HTTP status
    the caller should answer with, and the message says what was wrong in words."""

    code = "not_an_image"


def decode(
    data: bytes,
    filename: str = "",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_burned_in_annotation: bool = False,
) -> np.ndarray:
    """One grayscale picture, (H, W) float32 in [0, 1], from PNG, JPEG or DICOM bytes.

    The container is recognised by its content; `filename` only improves messages."""
    return as_float(
        decode_gray(
            data, filename, max_pixels=max_pixels, allow_burned_in_annotation=allow_burned_in_annotation
        )
    )


def as_float(image: np.ndarray) -> np.ndarray:
    """A decoded picture as float32 in [0, 1] (uint8 pictures are their values / 255)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return image


def decode_gray(
    data: bytes,
    filename: str = "",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allow_burned_in_annotation: bool = False,
    frontal_chest_only: bool = False,
) -> np.ndarray:
    """As `decode`, but a picture stored with 8 bits per gray sample (most PNG and JPEG X-rays)
    comes back as its uint8 values (exactly `decode`'s floats times 255), a quarter of the memory
    and of the copy back from the decoding process. `allow_burned_in_annotation` accepts a DICOM
    that says its pixels hold text (patient names, dates); `frontal_chest_only` refuses a DICOM
    whose header is not a frontal chest radiograph (engine.dicom_checks), before its pixels are
    read."""
    if not data:
        raise DecodeError("The file is empty.", code="empty", status=400)
    label = f"{filename!r} " if filename else ""
    if len(data) >= 132 and data[128:132] == b"DICM":
        image = _decode_dicom(
            data, label, max_pixels, allow_burned_in_annotation, frontal_chest_only, has_meta=True
        )
    elif _looks_like_headerless_dicom(data):
        image = _decode_dicom(
            data, label, max_pixels, allow_burned_in_annotation, frontal_chest_only, has_meta=False
        )
    else:
        if data.startswith(_PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
            # The size is in the first chunk: refuse from it, with the real dimensions in the message,
            # before Pillow's own (coarser) bomb limit would.
            width, height = struct.unpack(">II", data[16:24])
            check_size(width, height, 1, max_pixels, label)
        elif data.startswith(_JPEG_MAGIC):
            _check_jpeg_scans(data, label)
        image = _decode_pillow(data, label, max_pixels)
    if image.dtype != np.uint8 and not np.isfinite(image).all():
        # Only a DICOM header can do this (a NaN or overflowing rescale slope or window).
        raise DecodeError(
            f"The file {label}gives pixel values that are not finite numbers (check its rescale "
            "slope/intercept and window values).",
            code="invalid_pixel_values",
        )
    return image


def check_size(width: int, height: int, frames: int, max_pixels: int, label: str = "") -> None:
    """Refuses a declared size that would be costly to decode or to resize (see MAX_SIDE and
    MAX_ASPECT_RATIO), before any pixel is decoded."""
    if width <= 0 or height <= 0:
        raise DecodeError(f"The image {label}has no pixels ({width}x{height}).", code="truncated")
    if width * height * max(frames, 1) > max_pixels:
        raise DecodeError(
            f"The image {label}is {width}x{height} pixels"
            + (f" x {frames} frames" if frames > 1 else "")
            + f", more than the {max_pixels:,} allowed.",
            code="too_many_pixels",
            status=413,
        )
    if max(width, height) > MAX_SIDE:
        raise DecodeError(
            f"The image {label}is {width}x{height} pixels; a side may be at most {MAX_SIDE:,} pixels.",
            code="too_many_pixels",
            status=413,
        )
    if max(width, height) > max(ASPECT_CHECKED_FROM, MAX_ASPECT_RATIO * min(width, height)):
        raise DecodeError(
            f"The image {label}is {width}x{height} pixels, longer than {MAX_ASPECT_RATIO} times its "
            "width; that is not a radiograph this service reads.",
            code="unsupported_shape",
            status=422,
        )


def _check_jpeg_scans(data: bytes, label: str) -> None:
    # Inside entropy-coded data a 0xFF byte is always followed by 0x00 or a restart marker, so each
    # FF DA is a start of scan (or sits inside a metadata segment, e.g. an Exif thumbnail's own
    # scan): the count is an upper bound, found in one pass over the bytes without decoding.
    scans = data.count(_JPEG_SOS)
    if scans > MAX_JPEG_SCANS:
        raise DecodeError(
            f"The JPEG {label}has {scans} scans; at most {MAX_JPEG_SCANS} are accepted (a progressive "
            "JPEG needs about 10).",
            code="too_many_scans",
            status=422,
        )


def _looks_like_headerless_dicom(data: bytes) -> bool:
    # ACR-NEMA style files (no preamble, no File Meta) start with a little-endian group 0x0008 or
    # 0x0002 tag; asking pydicom to force-parse anything else would "succeed" on garbage.
    return len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[3:4] == b"\x00"


def _decode_pillow(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))  # lazy: reads the header only
    except Image.DecompressionBombError as exc:
        raise DecodeError(
            f"The image {label}has too many pixels ({exc}).", code="too_many_pixels", status=413
        ) from exc
    except UnidentifiedImageError as exc:
        raise DecodeError(
            f"The file {label}is not an image this service reads (PNG, JPEG or DICOM).",
            code="not_an_image",
            status=415,
        ) from exc
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(f"The image {label}cannot be read: {exc}.", code="truncated") from exc

    if image.format not in _PIL_FORMATS:
        raise DecodeError(
            f"{image.format} images are not supported; send PNG, JPEG or DICOM.",
            code="unsupported_format",
            status=415,
        )
    width, height = image.size
    check_size(width, height, 1, max_pixels, label)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _pil_to_gray(image)
    except Image.DecompressionBombError as exc:
        raise DecodeError(
            f"The image {label}has too many pixels ({exc}).", code="too_many_pixels", status=413
        ) from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        raise DecodeError(
            f"The {image.format} image {label}is truncated or corrupt ({exc}).", code="truncated"
        ) from exc


def _pil_to_gray(image: Image.Image) -> np.ndarray:
    """Gray values: uint8 for an 8-bit gray picture, else float32 in [0, 1], scaled by the bit depth
    so an 8-bit picture and its 16-bit copy (value * 257) give the same floats."""
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        return np.asarray(image, dtype=np.uint16).astype(np.float32) / 65535.0
    if mode == "I":
        # Pillow opens some 16-bit grayscale PNGs as 32-bit "I"; their values are still 16-bit.
        arr = np.asarray(image, dtype=np.int64)
        if arr.min() >= 0 and arr.max() <= 65535:
            return (arr / 65535.0).astype(np.float32)
        return _min_max(arr.astype(np.float64))
    if mode == "F":
        return _min_max(np.asarray(image, dtype=np.float64))
    if mode == "L":
        return np.asarray(image, dtype=np.uint8)
    if mode == "LA":
        return np.asarray(image.getchannel("L"), dtype=np.uint8)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # ITU-R 601-2 luma, as Pillow's convert("L") but without rounding to 8 bits.
    rgb = np.asarray(image, dtype=np.float32)
    gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
    return np.clip(gray / 255.0, 0.0, 1.0).astype(np.float32)


def _min_max(arr: np.ndarray) -> np.ndarray:
    arr = np.nan_to_num(np.asarray(arr, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    low, high = float(arr.min()), float(arr.max())
    if high <= low:
        return np.zeros(arr.shape, dtype=np.float32)
    return ((arr - low) / (high - low)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# DICOM


def _not_an_image(label: str) -> DecodeError:
    return DecodeError(
        f"The file {label}is not an image this service reads (PNG, JPEG or DICOM).",
        code="not_an_image",
        status=415,
    )


def _read_dicom(data: bytes, label: str, max_pixels: int, *, has_meta: bool):
    """The dataset, through pydicom. A deflated dataset is inflated here first, stopping at a size
    that the allowed pixel count justifies (pydicom would inflate all of it in one call)."""
    import pydicom
    from pydicom.filereader import read_dataset

    if has_meta:
        fp = io.BytesIO(data)
        fp.seek(132)
        meta = read_dataset(fp, is_implicit_VR=False, is_little_endian=True, stop_when=_past_file_meta)
        if str(meta.get("TransferSyntaxUID", "")).strip("\x00 ") == _DEFLATED:
            limit = max_pixels * DEFLATED_BYTES_PER_PIXEL + DEFLATED_HEADER_BYTES
            inflater = zlib.decompressobj(-zlib.MAX_WBITS)
            head = inflater.decompress(data[fp.tell() :], _DEFLATED_HEAD_BYTES)
            limit = min(limit, _declared_size(head))
            body = head + inflater.decompress(inflater.unconsumed_tail, limit + 1 - len(head))
            if len(body) > limit:
                raise DecodeError(
                    f"The deflated DICOM file {label}inflates to more than {limit / 1048576:,.0f} MB, "
                    "more than the image its header declares (within the allowed pixel count) needs.",
                    code="too_many_pixels",
                    status=413,
                )
            dataset = read_dataset(io.BytesIO(body), is_implicit_VR=False, is_little_endian=True)
            ds = pydicom.dataset.FileDataset(
                "",
                dataset,
                preamble=data[:128],
                file_meta=pydicom.dataset.FileMetaDataset(meta),
                is_implicit_VR=False,
                is_little_endian=True,
            )
            return ds
    return pydicom.dcmread(io.BytesIO(data), force=True)


def _declared_size(head: bytes) -> int:
    """What the dataset whose first inflated bytes are `head` needs: its pixels as the header
    declares them, and `head`'s size again for the elements (very large without a readable size)."""
    from pydicom.filereader import read_dataset

    try:
        header = read_dataset(
            io.BytesIO(head), is_implicit_VR=False, is_little_endian=True, stop_when=_at_pixel_data
        )
        pixels = int(header.Rows) * int(header.Columns) * int(header.get("NumberOfFrames") or 1)
        sample_bytes = -(-int(header.get("BitsAllocated") or 16) // 8)
        return pixels * int(header.get("SamplesPerPixel") or 1) * sample_bytes + _DEFLATED_HEAD_BYTES
    except Exception:  # noqa: BLE001 - unreadable here: the full read says what is wrong
        return 1 << 62


def _at_pixel_data(tag, vr, length) -> bool:
    return tag == 0x7FE00010


def _past_file_meta(tag, vr, length) -> bool:
    return tag >> 16 != 2


def _decode_dicom(
    data: bytes,
    label: str,
    max_pixels: int,
    allow_burned_in_annotation: bool,
    frontal_chest_only: bool,
    *,
    has_meta: bool,
) -> np.ndarray:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = _read_dicom(data, label, max_pixels, has_meta=has_meta)
            # Touch the elements we need so a broken header fails here, not later.
            rows, cols = ds.get("Rows"), ds.get("Columns")
            has_pixels = "PixelData" in ds
            pixel_bytes = ds.get("PixelData") if has_pixels else None
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - a hostile header can make pydicom raise anything
        # (InvalidDicomError, EOFError, zlib.error from a cut deflated file, RecursionError from
        # sequences nested thousands deep, ...): each means the header cannot be read.
        if not has_meta:
            raise _not_an_image(label) from exc
        raise DecodeError(f"The DICOM file {label}cannot be read: {exc}.", code="truncated") from exc

    if not has_pixels or not pixel_bytes:
        if not has_meta and not rows:
            raise _not_an_image(label)
        raise DecodeError(
            f"The DICOM file {label}holds no pixel data (it is not an image, e.g. a report or a "
            "structured document).",
            code="dicom_no_pixels",
        )
    if not rows or not cols:
        raise DecodeError(f"The DICOM file {label}has no Rows/Columns.", code="dicom_no_pixels")
    if not allow_burned_in_annotation:
        burned_in = dicom_checks.burned_in_refusal(ds)
        if burned_in:
            raise DecodeError(
                f"The DICOM file {label}cannot be analysed: {burned_in}.",
                code="burned_in_annotation",
                status=422,
            )
    if frontal_chest_only:
        refusal = dicom_checks.frontal_chest_refusal(ds)
        if refusal:
            # The models were made for frontal chest films: a lateral, another body part or
            # another modality would get scores that mean nothing.
            raise DecodeError(f"{refusal[:1].upper()}{refusal[1:]}.", code="not_frontal_chest", status=422)
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        frames, samples = 1, 1
    check_size(int(cols), int(rows), frames, max_pixels, label)

    meta = getattr(ds, "file_meta", None)
    if meta is None or "TransferSyntaxUID" not in meta:
        # ACR-NEMA files carry no transfer syntax; the reader knows how it parsed them.
        meta = meta if meta is not None else pydicom.dataset.FileMetaDataset()
        implicit = getattr(ds, "original_encoding", (True, True))[0]
        meta.TransferSyntaxUID = ImplicitVRLittleEndian if implicit else ExplicitVRLittleEndian
        ds.file_meta = meta
    syntax = meta.TransferSyntaxUID
    try:
        decoder = pydicom.pixels.get_decoder(syntax)
        available = decoder.is_available
    except NotImplementedError:
        available = False
    if not available:
        raise DecodeError(
            f"The DICOM file {label}uses transfer syntax {getattr(syntax, 'name', '') or syntax} "
            f"({syntax}), which this service cannot decompress.",
            code="unsupported_transfer_syntax",
            status=415,
        )
    if str(syntax) in _DICOM_JPEG_SYNTAXES and isinstance(pixel_bytes, bytes):
        # The frames are JPEG streams: the same scan limit as an uploaded JPEG, per frame.
        scans = pixel_bytes.count(_JPEG_SOS)
        if scans > MAX_JPEG_SCANS * max(frames, 1):
            raise DecodeError(
                f"The JPEG frames of the DICOM file {label}have {scans} scans; at most "
                f"{MAX_JPEG_SCANS} per frame are accepted.",
                code="too_many_scans",
                status=422,
            )

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=0 if frames > 1 else None)
            arr = ds.pixel_array
            if arr.ndim == 3 and samples == 1:  # multi-frame that ignored the index
                arr = arr[0]
            return _dicom_to_gray(arr, ds)
    except (DecodeError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - pydicom and its plugins raise many types
        raise DecodeError(
            f"The pixel data of the DICOM file {label}cannot be decoded ({type(exc).__name__}: "
            f"{str(exc)[:200]}).",
            code="truncated",
        ) from exc


def _dicom_to_gray(arr: np.ndarray, ds) -> np.ndarray:
    from pydicom.pixels import apply_modality_lut, apply_voi

    if arr.ndim == 3:  # colour (RGB after pydicom's YBR conversion)
        rgb = arr.astype(np.float32)
        bits = int(ds.get("BitsStored") or 8)
        gray = rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114
        return np.clip(gray / (2**bits - 1), 0, 1).astype(np.float32)

    bits = int(ds.get("BitsStored") or ds.get("BitsAllocated") or 8)
    signed = int(ds.get("PixelRepresentation") or 0) == 1
    stored_low = -(2 ** (bits - 1)) if signed else 0
    stored_high = 2 ** (bits - 1) - 1 if signed else 2**bits - 1

    # The full range the modality transform can give, so unwindowed images scale by bit depth
    # (an 8-bit DICOM gives the same floats as the 8-bit PNG of its pixels). Float32 throughout:
    # exact for 16-bit values, and half the memory of pydicom's float64 on a 60 Mpx plate.
    if "ModalityLUTSequence" in ds:
        values = apply_modality_lut(arr, ds).astype(np.float32)
        lut = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
        low, high = float(lut.min()), float(lut.max())
    else:
        slope = float(ds.get("RescaleSlope") or 1.0)
        intercept = float(ds.get("RescaleIntercept") or 0.0)
        values = arr.astype(np.float32)
        if slope != 1.0 or intercept != 0.0:
            values = values * np.float32(slope) + np.float32(intercept)
        low, high = sorted((stored_low * slope + intercept, stored_high * slope + intercept))

    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        values = apply_voi(values, ds, index=0).astype(np.float32)
        lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
        low, high = float(lut.min()), float(lut.max())
        gray = _scale(values, low, high)
    elif ds.get("WindowCenter") is not None and ds.get("WindowWidth") is not None:
        gray = _window(values, ds)
    else:
        gray = _scale(values, low, high)

    if str(ds.get("PhotometricInterpretation", "")).strip() == "MONOCHROME1":
        gray = 1.0 - gray
    return gray.astype(np.float32)


def _scale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return _min_max(values)
    return np.clip((values - low) / (high - low), 0.0, 1.0)


def _first(value) -> float:
    try:
        return float(value[0])
    except (TypeError, IndexError, KeyError):
        return float(value)


def _window(values: np.ndarray, ds) -> np.ndarray:
    """The DICOM VOI window (PS3.3 C.11.2.1.2) straight to [0, 1]."""
    center, width = _first(ds.WindowCenter), _first(ds.WindowWidth)
    function = str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR").strip().upper()
    if function == "SIGMOID" and width > 0:
        return 1.0 / (1.0 + np.exp(-4.0 * (values - center) / width))
    if function == "LINEAR_EXACT" and width > 0:
        return np.clip((values - center) / width + 0.5, 0.0, 1.0)
    if width < 1:
        return (values > center - 0.5).astype(np.float32)
    if width == 1:
        return (values >= center - 0.5).astype(np.float32)
    return np.clip((values - (center - 0.5)) / (width - 1.0) + 0.5, 0.0, 1.0)
