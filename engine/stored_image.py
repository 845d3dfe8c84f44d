"""The copy of an upload that the prediction log keeps: a PNG written from the decoded pixels, never
the uploaded bytes. Whatever else a file carries (text after a JPEG's end, Exif or comments between
scans, bytes hidden in PNG chunks or after the compressed stream, a DICOM header) is not pixels, so
it cannot reach storage. No Django here.

Both functions run in the decoding process (engine.decode_pool), not in a request's thread: the
stored copy is written where the upload is decoded, and the pages' pictures (thumbnails, the
viewer's pixels, the heatmaps' size) come from `display_levels`, a bounded-size derivative, so a
worker never holds the pixels of a 60-megapixel stored copy to draw a page."""

from __future__ import annotations

import io
import zlib

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
        pixels = np.round(scaled, out=scaled).astype(np.uint16)
        del scaled
    buffer = io.BytesIO()
    # zlib level 1 with its run-length strategy (Pillow's compress_type): an X-ray's rows repeat
    # little, so the slower string matching of the default strategy buys a few percent of size for
    # a third more time; the copy is still lossless.
    Image.fromarray(pixels).save(buffer, format="PNG", compress_level=1, compress_type=zlib.Z_RLE)
    return buffer.getvalue()


def display_levels(data: bytes, max_side: int) -> tuple[np.ndarray, int]:
    """A stored copy's bytes (PNG: L or I;16; JPEG of older rows: L or RGB) -> its gray levels at
    most `max_side` on the longest side, as (H, W) uint16, and their maximum (255 for an 8-bit
    copy, 65535 for a 16-bit one). Area averaging (BOX) on float levels: no ringing, so nothing
    leaves 0..maximum."""
    with Image.open(io.BytesIO(data)) as pil:
        pil.draft("L", (max_side, max_side))  # a JPEG decodes at a reduced scale
        if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
            pixels, maximum = np.clip(np.asarray(pil), 0, 65535).astype(np.uint16), 65535
        else:
            pixels, maximum = np.asarray(pil.convert("L")).astype(np.uint16), 255
    height, width = pixels.shape
    factor = max_side / max(height, width)
    if factor < 1:
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        small = Image.fromarray(pixels.astype(np.float32)).resize(size, Image.Resampling.BOX)
        pixels = np.clip(np.rint(np.asarray(small)), 0, maximum).astype(np.uint16)
    return pixels, maximum


def image_size(handle) -> tuple[int, int]:
    """(width, height) of a stored copy from its header alone (Pillow opens lazily): no pixels are
    decoded. `handle` is a binary file object."""
    with Image.open(handle) as pil:
        return pil.size
