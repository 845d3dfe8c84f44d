"""From uploaded bytes to findings and heatmaps: decode, preprocess, one forward pass. No Django here.

Shapes, for the starter model (224 input, 13 findings):
    decode      bytes                         -> (H, W) float32 in [0, 1]
    decode_gray bytes                         -> (H, W) uint8 (8-bit sources) or float32 in [0, 1]
    preprocess  (H, W) float32                -> (1, 3, 224, 224) float32 (numpy)
    predict     (1, 3, 224, 224) float32      -> probabilities (13,), cams (13, 7, 7)
    cams_normalised (13, 7, 7)                -> (13, size, size) float32 in [0, 1]
    heatmap_overlay_png (H, W) + (7, 7)       -> PNG bytes
"""

from __future__ import annotations

import functools
import io
import struct
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from inference import png, resize
from inference.serving import ServingRuntime

if TYPE_CHECKING:  # torch is imported only to run a module the serving graph cannot describe
    from torch import nn

DEFAULT_MAX_PIXELS = 60_000_000

_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_MAGIC = b"\xff\xd8\xff"
# Formats decoded through Pillow. Others that Pillow recognises are refused by name.
_PIL_FORMATS = ("PNG", "JPEG")


class DecodeError(Exception):
    """An upload that is not a usable image. `code` is a stable identifier, `status` the HTTP status
    the caller should answer with, and the message says what was wrong in words."""

    def __init__(self, message: str, *, code: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class PredictionOutput:
    probabilities: np.ndarray  # (K,) float32, sigmoid outputs in the model's output order
    cams: np.ndarray  # (K, h, w) float32 Grad-CAM maps at feature-map resolution (ReLU applied)


# --------------------------------------------------------------------------------------------
# Decode


def decode(data: bytes, filename: str = "", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """One grayscale picture, (H, W) float32 in [0, 1], from PNG, JPEG or DICOM bytes.

    The container is recognised by its content; `filename` only improves messages. The pixel count
    is checked from the header before any pixel is decoded (decompression bombs)."""
    return as_float(decode_gray(data, filename, max_pixels=max_pixels))


def as_float(image: np.ndarray) -> np.ndarray:
    """A decoded picture as float32 in [0, 1] (uint8 pictures are their values / 255)."""
    if image.dtype == np.uint8:
        return image.astype(np.float32) / np.float32(255.0)
    return image


def decode_gray(data: bytes, filename: str = "", *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """As `decode`, but a picture stored with 8 bits per sample (most PNG and JPEG X-rays) comes
    back as its uint8 values (exactly `decode`'s floats times 255): the request path turns it into
    floats only after shrinking it to the model's input (`preprocess`), which saves converting and
    checking a million floats per 1024x1024 upload."""
    if not data:
        raise DecodeError("The file is empty.", code="empty", status=400)
    label = f"{filename!r} " if filename else ""
    if len(data) >= 132 and data[128:132] == b"DICM":
        image = _decode_dicom(data, label, max_pixels, has_meta=True)
    elif data.startswith(_PNG_MAGIC):
        image = _decode_gray8_png(data, label, max_pixels)
        if image is None:
            image = _decode_pillow(data, label, max_pixels)
    elif data.startswith(_JPEG_MAGIC):
        image = _decode_pillow(data, label, max_pixels)
    elif _looks_like_headerless_dicom(data):
        image = _decode_dicom(data, label, max_pixels, has_meta=False)
    else:
        image = _decode_pillow(data, label, max_pixels)
    if image.dtype != np.uint8 and not np.isfinite(image).all():
        # Only a DICOM header can do this (a NaN or overflowing rescale slope or window).
        raise DecodeError(
            f"The file {label}gives pixel values that are not finite numbers (check its rescale "
            "slope/intercept and window values).",
            code="invalid_pixel_values",
        )
    return image


def _looks_like_headerless_dicom(data: bytes) -> bool:
    # ACR-NEMA style files (no preamble, no File Meta) start with a little-endian group 0x0008 or
    # 0x0002 tag; asking pydicom to force-parse anything else would "succeed" on garbage.
    return len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[3:4] == b"\x00"


def png_chunks(data: bytes) -> list[tuple[bytes, int, int]] | None:
    """(type, start, end) of each chunk of a PNG, up to and including IEND; None when the bytes are
    not a PNG that walks cleanly to an IEND (truncated or malformed). audit.services uses it too,
    to keep only the pixel chunks of a stored upload."""
    if not data.startswith(_PNG_MAGIC):
        return None
    chunks, pos = [], len(_PNG_MAGIC)
    while pos + 12 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        kind, end = data[pos + 4 : pos + 8], pos + 12 + length
        if end > len(data):
            return None
        chunks.append((kind, pos, end))
        if kind == b"IEND":
            return chunks
        pos = end
    return None


_OPENCV_MAX_PIXELS = 1 << 30  # OpenCV's own limit (CV_IO_MAX_IMAGE_PIXELS); beyond it Pillow decides


@functools.cache
def _opencv():
    try:
        import cv2
    except ImportError:  # pragma: no cover - a requirement; Pillow still decodes without it
        return None
    cv2.setNumThreads(1)  # decoding is one thread per request; no pool of its own
    return cv2


def _decode_gray8_png(data: bytes, label: str, max_pixels: int) -> np.ndarray | None:
    """The common X-ray PNG (8-bit grayscale, no EXIF orientation): by `inference.png` (ISA-L +
    a compiled unfilter, 3.5 ms on a 1024x1024 file), else by OpenCV's libpng (7.3 ms; interlaced
    files, for one), with the same pixels as Pillow's (9.3 ms). None for anything else, and for
    anything OpenCV cannot read: Pillow then decodes it or says what is wrong with it."""
    if len(data) < 33 or data[12:16] != b"IHDR":
        return None
    width, height = struct.unpack_from(">II", data, 16)
    _check_pixels(width, height, 1, max_pixels, label)
    bit_depth, colour_type = data[24], data[25]
    if bit_depth != 8 or colour_type != 0 or width * height > _OPENCV_MAX_PIXELS:
        return None
    chunks = png_chunks(data)
    if chunks is None or any(kind == b"eXIf" for kind, _, _ in chunks):
        return None
    image = png.decode_gray8(data, chunks, width, height)
    if image is not None:
        return image
    cv2 = _opencv()
    if cv2 is None:
        return None
    try:
        image = cv2.imdecode(
            np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_GRAYSCALE | cv2.IMREAD_IGNORE_ORIENTATION
        )
    except cv2.error:  # e.g. beyond OpenCV's own pixel limit: Pillow says what is wrong
        return None
    if image is None or image.shape != (height, width) or image.dtype != np.uint8:
        return None
    return image


def _decode_pillow(data: bytes, label: str, max_pixels: int) -> np.ndarray:
    if data.startswith(_PNG_MAGIC) and len(data) >= 24 and data[12:16] == b"IHDR":
        # The size is in the first chunk: refuse a bomb with its real dimensions in the message,
        # before Pillow's own (coarser) limit would.
        width, height = struct.unpack(">II", data[16:24])
        _check_pixels(width, height, 1, max_pixels, label)
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
    _check_pixels(width, height, 1, max_pixels, label)
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


def _check_pixels(width: int, height: int, frames: int, max_pixels: int, label: str) -> None:
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
    if mode in ("RGBA", "RGBa", "P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1", "RGBX"):
        image = image.convert("RGB")
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


def _decode_dicom(data: bytes, label: str, max_pixels: int, *, has_meta: bool) -> np.ndarray:
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
            # Touch the elements we need so a broken header fails here, not later.
            rows, cols = ds.get("Rows"), ds.get("Columns")
            has_pixels = "PixelData" in ds
    except Exception as exc:  # noqa: BLE001 - a hostile header can make pydicom raise anything
        # (InvalidDicomError, EOFError, zlib.error from a cut deflated file, RecursionError from
        # sequences nested thousands deep, ...): each means the header cannot be read.
        if not has_meta:
            raise DecodeError(
                f"The file {label}is not an image this service reads (PNG, JPEG or DICOM).",
                code="not_an_image",
                status=415,
            ) from exc
        raise DecodeError(f"The DICOM file {label}cannot be read: {exc}.", code="truncated") from exc

    if not has_pixels:
        if not has_meta and not rows:
            raise DecodeError(
                f"The file {label}is not an image this service reads (PNG, JPEG or DICOM).",
                code="not_an_image",
                status=415,
            )
        raise DecodeError(
            f"The DICOM file {label}holds no pixel data (it is not an image, e.g. a report or a "
            "structured document).",
            code="dicom_no_pixels",
        )
    if not rows or not cols:
        raise DecodeError(f"The DICOM file {label}has no Rows/Columns.", code="dicom_no_pixels")
    try:
        frames = int(ds.get("NumberOfFrames") or 1)
        samples = int(ds.get("SamplesPerPixel") or 1)
    except (TypeError, ValueError):
        frames, samples = 1, 1
    _check_pixels(int(cols), int(rows), frames, max_pixels, label)

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

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds.pixel_array_options(index=0 if frames > 1 else None)
            arr = ds.pixel_array
            if arr.ndim == 3 and samples == 1:  # multi-frame that ignored the index
                arr = arr[0]
            return _dicom_to_gray(arr, ds)
    except DecodeError:
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


# --------------------------------------------------------------------------------------------
# Preprocess and predict


def preprocess(image: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W) float32 in [0, 1] (or uint8 from `decode_gray`) -> (1, C, S, S) float32, resized
    (antialiased bilinear, the whole field of view kept) and normalised per channel as the model's
    preprocessing JSON says."""
    size = int(spec.get("input_size", 224))
    channels = int(spec.get("channels", 3))
    mean = list(spec.get("mean", [0.485, 0.456, 0.406]))
    std = list(spec.get("std", [0.229, 0.224, 0.225]))
    if len(mean) == 1:
        mean = mean * channels
    if len(std) == 1:
        std = std * channels
    # 8-bit values are resized as they are (exact as floats) and divided by 255 afterwards: that
    # gives `decode`'s floats resized, to float32 rounding. `resize.bilinear` gives Pillow's pixels.
    scale = np.float32(1.0 / 255.0 if image.dtype == np.uint8 else 1.0)
    image = resize.bilinear(image, size, size) * scale
    mean_a = np.asarray(mean[:channels], dtype=np.float32).reshape(channels, 1, 1)
    std_a = np.asarray(std[:channels], dtype=np.float32).reshape(channels, 1, 1)
    return ((image[None, :, :] - mean_a) / std_a)[None].astype(np.float32, copy=False)


def _sigmoid(logits) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def predict(model: ServingRuntime | nn.Module, tensor) -> PredictionOutput:
    """ONE forward pass: sigmoid probabilities and the Grad-CAM map of every finding.

    torchvision's DenseNet is logits = W · mean_ij(ReLU(A)) + b with A the output of norm5
    (features[-1]). Grad-CAM's channel weight for finding c is the spatial mean of d logit_c / dA,
    i.e. W[c, k] * mean_ij(A_k > 0) / (h*w), and its map ReLU(sum_k weight_k * ReLU(A_k)) (the
    library sees ReLU(A) because DenseNet applies the ReLU in place on the hooked tensor). All
    findings' maps are therefore one (K x C) @ (C x h*w) product, no backward pass.

    `model` is what registry.cache serves: a ServingRuntime (the serving graph in ONNX Runtime,
    which computes exactly this) or, for a network the graph writer cannot describe, the torch
    module, run here. `tensor` is the (1, C, S, S) float32 array of `preprocess` (or a torch
    tensor)."""
    if isinstance(model, ServingRuntime):
        logits, cams = model.run(tensor)
        return PredictionOutput(probabilities=_sigmoid(logits), cams=np.asarray(cams, dtype=np.float32))
    import torch
    import torch.nn.functional as F

    from inference.export import linear_head

    if model.training:
        model.eval()
    if not isinstance(tensor, torch.Tensor):
        tensor = torch.from_numpy(np.ascontiguousarray(tensor, dtype=np.float32))
    with torch.inference_mode():
        features = model.features(tensor)  # (1, C, h, w), norm5 output
        activated = F.relu(features)
        pooled = activated.mean(dim=(2, 3))  # (1, C)
        head = linear_head(model)
        logits = F.linear(pooled, head.weight, head.bias)
        probabilities = torch.sigmoid(logits)[0]

        _, channels, h, w = features.shape
        positive = (features[0] > 0).to(features.dtype).mean(dim=(1, 2))  # (C,)
        weights = head.weight * (positive / (h * w)).unsqueeze(0)  # (K, C)
        cams = F.relu(weights @ activated[0].reshape(channels, h * w)).reshape(-1, h, w)
    return PredictionOutput(
        probabilities=probabilities.float().numpy().copy(),
        cams=cams.float().numpy().copy(),
    )


# --------------------------------------------------------------------------------------------
# Heatmaps


def _linear_resize_matrix(src: int, dst: int) -> np.ndarray:
    """(dst, src) weights of OpenCV's INTER_LINEAR (half-pixel centres, edge clamped), which is
    what pytorch_grad_cam uses to bring a map to the input size."""
    matrix = np.zeros((dst, src), dtype=np.float64)
    scale = src / dst
    for d in range(dst):
        f = (d + 0.5) * scale - 0.5
        s = int(np.floor(f))
        frac = f - s
        if s < 0:
            s, frac = 0, 0.0
        if s >= src - 1:
            s, frac = src - 1, 0.0
        matrix[d, s] += 1.0 - frac
        if frac:
            matrix[d, s + 1] += frac
    return matrix


def _library_scale(cams: np.ndarray, size: tuple[int, int] | None) -> np.ndarray:
    # pytorch_grad_cam.utils.image.scale_cam_image: per map min-max (eps 1e-7), optional resize.
    out = []
    for cam in cams:
        cam = cam - np.min(cam)
        cam = cam / (1e-7 + np.max(cam))
        if size is not None:
            width, height = size
            rows = _linear_resize_matrix(cam.shape[0], height).astype(np.float32)
            cols = _linear_resize_matrix(cam.shape[1], width).astype(np.float32)
            cam = rows @ cam.astype(np.float32) @ cols.T
        out.append(cam)
    return np.float32(out)


def cams_normalised(cams: np.ndarray, size: int | tuple[int, int] = 224) -> np.ndarray:
    """Raw maps (K, h, w) -> (K, H, W) in [0, 1] normalised exactly as pytorch_grad_cam does
    (ReLU, min-max, bilinear resize to the input size, ReLU, min-max). `size` is S or (W, H)."""
    if isinstance(size, int):
        size = (size, size)
    cams = np.maximum(np.asarray(cams, dtype=np.float32), 0)
    scaled = _library_scale(cams, size)
    return _library_scale(np.maximum(scaled, 0), None)


def _colour_lut() -> np.ndarray:
    # OpenCV's COLORMAP_JET (what pytorch_grad_cam's show_cam_on_image uses), as a 256x3 RGB table.
    x = np.linspace(0.0, 1.0, 256)
    r = np.clip(1.5 - np.abs(4.0 * x - 3.0), 0, 1)
    g = np.clip(1.5 - np.abs(4.0 * x - 2.0), 0, 1)
    b = np.clip(1.5 - np.abs(4.0 * x - 1.0), 0, 1)
    return np.round(np.stack([r, g, b], axis=1) * 255).astype(np.uint8)


_JET = _colour_lut()


def heatmap_overlay_png(image: np.ndarray, cam: np.ndarray, *, size: int = 512, alpha: float = 0.4) -> bytes:
    """The map of one finding in colour over the gray picture, longest side `size`, as PNG bytes.
    image: (H, W) float in [0, 1]; cam: (h, w) raw map at feature-map resolution."""
    height, width = image.shape[:2]
    scale = size / max(height, width)
    out_w, out_h = max(1, round(width * scale)), max(1, round(height * scale))
    gray = Image.fromarray(np.ascontiguousarray(image, dtype=np.float32)).resize(
        (out_w, out_h), Image.Resampling.BILINEAR
    )
    gray_arr = np.clip(np.asarray(gray, dtype=np.float32), 0, 1)
    heat = cams_normalised(cam[None], (out_w, out_h))[0]
    colour = _JET[np.clip(np.round(heat * 255), 0, 255).astype(np.uint8)].astype(np.float32) / 255.0
    blended = (1.0 - alpha) * gray_arr[..., None] + alpha * colour
    pixels = np.clip(np.round(blended * 255), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    # Level 1: ~2x faster than 3 on a 512x512 overlay (53 vs 85 ms measured), 6% larger.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# Batches (jobs/): the same forward pass over N images at once


def predict_batch(model: ServingRuntime | nn.Module, batch: np.ndarray) -> list[PredictionOutput]:
    """One forward pass over a batch: (N, C, S, S) float32 (rows of `preprocess`) -> N outputs, each
    as `predict` gives for that row alone (probabilities (K,), cams (K, h, w)). The serving graph
    takes any batch size; a torch module (no serving graph) runs row by row."""
    batch = np.ascontiguousarray(batch, dtype=np.float32)
    if isinstance(model, ServingRuntime):
        from inference.serving import CAMS, INPUT, LOGITS

        logits, cams = model.session.run([LOGITS, CAMS], {INPUT: batch})
        probabilities = _sigmoid(logits)
        cams = np.asarray(cams, dtype=np.float32)
        return [PredictionOutput(probabilities=probabilities[i], cams=cams[i]) for i in range(len(batch))]
    return [predict(model, batch[i : i + 1]) for i in range(len(batch))]
