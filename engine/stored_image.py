"""The copy of an upload that the prediction log keeps: a PNG written from the decoded pixels, never
the uploaded bytes. Whatever else a file carries (text after a JPEG's end, Exif or comments between
scans, bytes hidden in PNG chunks or after the compressed stream, a DICOM header) is not pixels, so
it cannot reach storage. No Django here."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

EXTENSION = "png"
CONTENT_TYPE = "image/png"


def png_bytes(image: np.ndarray) -> bytes:
    """(H, W) pixels as `engine.decode.decode_gray` gives them -> PNG bytes, no ancillary chunks.

    uint8 (an 8-bit gray source) gives an 8-bit PNG of exactly those values; float32 in [0, 1]
    (16-bit sources, DICOM after its rescale and window, colour turned to gray) a 16-bit PNG, so the
    copy is the picture the model analysed to 1/65535."""
    if image.dtype == np.uint8:
        pixels = np.ascontiguousarray(image)
    else:
        scaled = np.clip(np.asarray(image, dtype=np.float32), 0.0, 1.0) * np.float32(65535.0)
        pixels = np.round(scaled).astype(np.uint16)
    buffer = io.BytesIO()
    # Level 1: the write runs beside the forward pass; higher levels cost several times the time
    # for a file a few percent smaller.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
