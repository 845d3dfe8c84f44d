"""The commonest upload, a non-interlaced 8-bit grayscale PNG, decoded in about half the time of
libpng (OpenCV) or Pillow.

A 1024x1024 chest X-ray PNG is about 400 KB of deflate data and a million filtered bytes. libpng
and Pillow spend ~7 ms on one here: ~4 ms in zlib's inflate and ~3.5 ms reversing the row
filters, mostly Paeth, one byte at a time. ISA-L inflates the same stream in ~1.6 ms
(`isal.isal_zlib`, zlib's API and checks), and the filters are reversed by a small loop that numba
compiles to machine code (~1.9 ms). The pixels are the same as Pillow's (tests/inference/test_png.py
checks every PNG in ../shared/data).

`decode_gray8` answers None for anything it does not handle (another format or bit depth,
interlacing, a bad checksum, truncated or extra data, an unknown filter type): the caller then
decodes the file with OpenCV or Pillow, which also say what is wrong with a broken one.
"""

from __future__ import annotations

import struct

import numba
import numpy as np
from isal import isal_zlib


def compiled(function):
    """numba.njit for the loops of the upload path (this module's and `inference.resize`'s):
    machine code that releases the GIL and skips bounds checks."""
    options = {"nogil": True, "boundscheck": False}
    try:
        # Machine code cached next to this file (or in NUMBA_CACHE_DIR): a new process loads it
        # in ~0.1 s instead of compiling for ~0.5 s on its first image.
        return numba.njit(cache=True, **options)(function)
    except RuntimeError:  # no writable cache location: compile in each process instead
        return numba.njit(**options)(function)


@numba.njit(inline="always")
def _paeth(left, above, upper_left):  # pragma: no cover - runs as machine code
    """The neighbour (left, above, upper-left) nearest to left + above - upper_left."""
    to_left = abs(above - upper_left)  # |p - left|
    to_above = abs(left - upper_left)  # |p - above|
    to_upper_left = abs(left + above - upper_left - upper_left)
    predicted = above if to_above < to_left else left
    nearest = to_above if to_above < to_left else to_left
    return upper_left if to_upper_left < nearest else predicted


@compiled
def _unfilter(raw, out, height, width):  # pragma: no cover - runs as machine code
    """Reverses the PNG row filters of one byte per pixel. `raw` holds `height` rows of a filter
    byte and `width` bytes; `out` is (height + 1) * width bytes whose first row is zeros (the row
    "above" the image). Returns -1, or the first row whose filter type is not 0-4.

    Average (3) and Paeth (4) rows, ~95% of an X-ray's, go one byte at a time: each byte waits
    for the one to its left. Two such rows in a row are therefore reversed together, the lower
    one byte for byte just behind the upper one, so that two chains of additions run side by side
    (~20% faster than one row at a time)."""
    stride = width + 1
    y = 0
    while y < height:
        kind = raw[y * stride]
        src = y * stride + 1
        dst = (y + 1) * width
        up = y * width
        below = raw[src + width] if y + 1 < height else 0  # the next row's filter type
        if 3 <= kind <= 4 and 3 <= below <= 4:
            # out[dst + x] is the upper row's byte and the lower row's "above"; `left` (the upper
            # row's previous byte) is the lower row's upper-left.
            left = np.int32(0)
            upper_left = np.int32(0)
            lower = np.int32(0)
            if kind == 4 and below == 4:
                for x in range(width):
                    above = np.int32(out[up + x])
                    value = (np.int32(raw[src + x]) + _paeth(left, above, upper_left)) & 255
                    out[dst + x] = value
                    lower = (np.int32(raw[src + stride + x]) + _paeth(lower, value, left)) & 255
                    out[dst + width + x] = lower
                    upper_left = above
                    left = value
            elif kind == 4:
                for x in range(width):
                    above = np.int32(out[up + x])
                    value = (np.int32(raw[src + x]) + _paeth(left, above, upper_left)) & 255
                    out[dst + x] = value
                    lower = (np.int32(raw[src + stride + x]) + ((lower + value) >> 1)) & 255
                    out[dst + width + x] = lower
                    upper_left = above
                    left = value
            elif below == 4:
                for x in range(width):
                    value = (np.int32(raw[src + x]) + ((left + np.int32(out[up + x])) >> 1)) & 255
                    out[dst + x] = value
                    lower = (np.int32(raw[src + stride + x]) + _paeth(lower, value, left)) & 255
                    out[dst + width + x] = lower
                    left = value
            else:
                for x in range(width):
                    value = (np.int32(raw[src + x]) + ((left + np.int32(out[up + x])) >> 1)) & 255
                    out[dst + x] = value
                    lower = (np.int32(raw[src + stride + x]) + ((lower + value) >> 1)) & 255
                    out[dst + width + x] = lower
                    left = value
            y += 2
            continue
        if kind == 0:  # None
            for x in range(width):
                out[dst + x] = raw[src + x]
        elif kind == 1:  # Sub
            byte = np.uint8(0)
            for x in range(width):
                byte = np.uint8(raw[src + x] + byte)
                out[dst + x] = byte
        elif kind == 2:  # Up
            for x in range(width):
                out[dst + x] = np.uint8(raw[src + x] + out[up + x])
        elif kind == 3:  # Average
            left = np.int32(0)
            for x in range(width):
                left = (np.int32(raw[src + x]) + ((left + np.int32(out[up + x])) >> 1)) & 255
                out[dst + x] = left
        elif kind == 4:  # Paeth
            left = np.int32(0)
            upper_left = np.int32(0)
            for x in range(width):
                above = np.int32(out[up + x])
                left = (np.int32(raw[src + x]) + _paeth(left, above, upper_left)) & 255
                out[dst + x] = left
                upper_left = above
        else:
            return y
        y += 1
    return -1


def warm_up() -> None:
    """Compiles `_unfilter` now (or loads it from numba's cache) rather than on the first PNG."""
    # The same argument types as decode_gray8's: raw pixel data is a read-only view of bytes.
    _unfilter(np.frombuffer(bytes(2), dtype=np.uint8), np.zeros(2, dtype=np.uint8), 1, 1)


def decode_gray8(
    data: bytes, chunks: list[tuple[bytes, int, int]], width: int, height: int
) -> np.ndarray | None:
    """(height, width) uint8 pixels of an 8-bit grayscale, non-interlaced PNG whose chunks
    (`inference.pipeline.png_chunks`) and IHDR size the caller has read and checked; None for
    anything else (see the module's docstring)."""
    if width <= 0 or height <= 0 or len(data) < 33 or data[24:29] != b"\x08\x00\x00\x00\x00":
        return None  # bit depth 8, grayscale, deflate, adaptive filtering, no interlace
    parts = []
    for kind, start, end in chunks:
        if kind in (b"IHDR", b"IDAT"):
            (crc,) = struct.unpack_from(">I", data, end - 4)
            if isal_zlib.crc32(data[start + 4 : end - 4]) != crc:
                return None
            if kind == b"IDAT":
                parts.append(data[start + 8 : end - 4])
    expected = height * (width + 1)
    inflater = isal_zlib.decompressobj()
    try:
        raw = inflater.decompress(b"".join(parts), expected + 1)
    except isal_zlib.error:
        return None
    if len(raw) != expected or not inflater.eof or inflater.unused_data or inflater.unconsumed_tail:
        return None
    out = np.zeros((height + 1) * width, dtype=np.uint8)
    if _unfilter(np.frombuffer(raw, dtype=np.uint8), out, height, width) != -1:
        return None
    return out[width:].reshape(height, width)
