"""inference.png, the fast decoder of 8-bit grayscale PNGs: Pillow's pixels on every real PNG and
on every row filter, and None (so OpenCV or Pillow decide) for whatever it does not handle."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from inference import pipeline, png
from tests.conftest import SHARED_DATA

_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _pillow(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image)


def _fast(data: bytes) -> np.ndarray | None:
    width, height = struct.unpack_from(">II", data, 16)
    return png.decode_gray8(data, pipeline.png_chunks(data), width, height)


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


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


def _gray_png(pixels: np.ndarray, kinds: list[int], *, split: int = 1, interlace: int = 0) -> bytes:
    height, width = pixels.shape
    stream = zlib.compress(_filtered(pixels, kinds), 6)
    step = -(-len(stream) // split)
    idats = b"".join(_chunk(b"IDAT", stream[i : i + step]) for i in range(0, len(stream), step))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, interlace)
    text = _chunk(b"tEXt", b"Comment\x00ancillary chunks are skipped")
    return _SIGNATURE + _chunk(b"IHDR", ihdr) + text + idats + _chunk(b"IEND", b"")


def test_it_gives_pillows_pixels_for_every_real_png():
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found: {SHARED_DATA} (the ../shared/data folder is absent)")
    decoded = skipped = 0
    for path in sorted(SHARED_DATA.rglob("*.png")):
        data = path.read_bytes()
        with Image.open(io.BytesIO(data)) as image:
            handled = image.mode == "L" and image.info.get("interlace", 0) == 0
        fast = _fast(data)
        if not handled:
            assert fast is None, path.name  # RGBA, 16-bit, ...: left to OpenCV and Pillow
            skipped += 1
            continue
        assert fast is not None, path.name
        assert fast.dtype == np.uint8 and fast.flags.c_contiguous
        np.testing.assert_array_equal(fast, _pillow(data), err_msg=path.name)
        decoded += 1
    assert decoded >= 200 and skipped >= 1  # the 250 NIH PNGs are almost all 8-bit gray


@pytest.mark.parametrize(
    "kinds",
    # Rows of every type, mixed in runs of several lengths: each row of a wavefront block (see
    # png._unfilter) picks its own type, and reads the row above whatever that row's type was.
    [[0], [1], [2], [3], [4], [4, 3, 2, 1, 0], [2, 4, 0, 3, 1], [3, 4, 4, 3, 3], [4, 4, 4, 1]],
    ids=lambda kinds: "filters-" + "".join(map(str, kinds)),
)
@pytest.mark.parametrize(
    "shape",
    # Heights below, at and past png._LANES (128 rows reversed together), with a short last block;
    # widths of 1, of a multiple of 8 and of neither.
    [(37, 53), (1, 19), (23, 1), (64, 64), (128, 8), (300, 13), (257, 1)],
    ids=lambda s: f"{s[0]}x{s[1]}",
)
def test_it_reverses_every_row_filter(kinds, shape):
    rng = np.random.default_rng(sum(shape) + len(kinds))
    # Noise, plus smooth gradients and flat runs, where the Paeth predictor's ties are decided.
    pixels = rng.integers(0, 256, size=shape, dtype=np.uint8)
    gradient = np.add.outer(np.arange(shape[0] // 2), np.arange(shape[1])) * 7 % 256
    pixels[: shape[0] // 2] = gradient.astype(np.uint8)
    pixels[:, : shape[1] // 3] = 200
    data = _gray_png(pixels, kinds, split=3)
    np.testing.assert_array_equal(_pillow(data), pixels)  # the hand-written file is valid
    np.testing.assert_array_equal(_fast(data), pixels)
    np.testing.assert_array_equal(pipeline.decode_gray(data), pixels)


def _one_byte_changed(data: bytes, offset: int) -> bytes:
    return data[:offset] + bytes([data[offset] ^ 0x5A]) + data[offset + 1 :]


def _cases() -> dict[str, bytes]:
    pixels = np.random.default_rng(7).integers(0, 256, size=(32, 48), dtype=np.uint8)
    good = _gray_png(pixels, [4, 1])
    idat_start = good.index(b"IDAT") - 4
    (idat_length,) = struct.unpack_from(">I", good, idat_start)
    idat_end = idat_start + 12 + idat_length
    stream = good[idat_start + 8 : idat_end - 4]
    ihdr = good[8 : 8 + 25]
    iend = good[idat_end:]

    def with_stream(new_stream: bytes) -> bytes:
        return good[:idat_start] + _chunk(b"IDAT", new_stream) + iend

    bad_filter = bytearray(_filtered(pixels, [4, 1]))
    bad_filter[5 * 49] = 5  # row 5's filter type
    return {
        "idat-crc": good[: idat_end - 1] + bytes([good[idat_end - 1] ^ 1]) + iend,
        "ihdr-crc": good[:8] + ihdr[:-1] + bytes([ihdr[-1] ^ 1]) + good[33:],
        "corrupt-deflate": with_stream(_one_byte_changed(stream, len(stream) // 2)),
        "adler32": with_stream(stream[:-1] + bytes([stream[-1] ^ 1])),
        "short-stream": with_stream(zlib.compress(_filtered(pixels[:-1], [4, 1]))),
        "long-stream": with_stream(zlib.compress(_filtered(np.vstack([pixels, pixels[:1]]), [4, 1]))),
        "data-after-stream": with_stream(stream + b"\x00\x01"),
        "unknown-filter": with_stream(zlib.compress(bytes(bad_filter))),
        # (Adam7 lays rows out differently: this file's IHDR says so but its data is not Adam7;
        # the header alone must send it elsewhere.)
        "interlaced": _gray_png(pixels, [0], interlace=1),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_it_leaves_what_it_does_not_handle_to_opencv_and_pillow(case):
    data = _cases()[case]
    assert _fast(data) is None
    # What such a file is, is then OpenCV's and Pillow's to say (libpng reads past some of these
    # with a warning); either way a picture or a 4xx refusal, never a crash.
    try:
        image = pipeline.decode_gray(data)
    except pipeline.DecodeError as exc:
        assert 400 <= exc.status < 500 and str(exc)
    else:
        assert image.shape == (32, 48)


def test_it_refuses_other_bit_depths_and_colour_types():
    rgb = io.BytesIO()
    Image.new("RGB", (8, 8), (10, 20, 30)).save(rgb, format="PNG")
    sixteen = io.BytesIO()
    Image.fromarray(np.full((8, 8), 1000, dtype=np.uint16)).save(sixteen, format="PNG")
    for data in (rgb.getvalue(), sixteen.getvalue()):
        assert _fast(data) is None


def test_warm_up_compiles_the_unfilter_for_the_types_decoding_uses():
    png.warm_up()
    assert len(png._unfilter.signatures) == 1
    _fast(_gray_png(np.arange(12, dtype=np.uint8).reshape(3, 4), [4]))
    assert len(png._unfilter.signatures) == 1  # a real decode needed no second compilation


def test_without_a_cache_location_the_unfilter_is_compiled_in_process(monkeypatch):
    """numba refuses cache=True when it finds no writable place (a read-only install, no usable
    home); the decoder must then still load, compiling in each process."""
    import numba

    real_njit = numba.njit

    def njit(*args, **options):
        if options.get("cache"):
            raise RuntimeError("cannot cache function '_unfilter': no locator available")
        return real_njit(*args, **options)

    monkeypatch.setattr(numba, "njit", njit)
    unfilter = png.compiled(png._unfilter.py_func)
    raw = np.frombuffer(_filtered(np.arange(20, dtype=np.uint8).reshape(4, 5), [4]), dtype=np.uint8)
    out = np.zeros(5 * 5, dtype=np.uint8)
    assert unfilter(raw, out, 4, 5) == -1
    np.testing.assert_array_equal(out[5:].reshape(4, 5), np.arange(20, dtype=np.uint8).reshape(4, 5))
