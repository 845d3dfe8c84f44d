"""Grad-CAM maps -> pictures. No Django here.

Shapes, for the starter model (224 input, 13 findings):
    cams_normalised     (13, 7, 7)          -> (13, size, size) float32 in [0, 1], as pytorch_grad_cam
    case_scale          {name: (7, 7)}      -> float, the largest map value of the case
    heat_layer          (7, 7), (W, H)      -> (H, W, 4) uint8 RGBA, transparent below the cut-off
    heatmap_overlay_png (W, H) + (7, 7)     -> PNG bytes of that RGBA layer (the X-ray not included)

The picture is a layer for the viewer to lay over the X-ray, not the X-ray tinted: a pixel is
transparent where the map is below CUT_OFF of the scale, and its colour and opacity grow with the
map above it. All findings of one prediction share one scale (the largest value over all of their
maps, `case_scale`), so a weak map looks weak next to a strong one instead of being stretched to its
own maximum; an empty map (zero everywhere) is fully transparent.
"""

from __future__ import annotations

import io
from collections.abc import Iterable

import numpy as np
from PIL import Image

# Map values below this fraction of the scale are not drawn (alpha 0).
CUT_OFF = 0.25
# Opacity at the scale's maximum; it rises linearly from 0 at the cut-off.
MAX_ALPHA = 0.7

# viridis (van der Walt and Smith, matplotlib's default): perceptually uniform (lightness rises
# evenly from dark blue to yellow) and readable with the common colour-vision deficiencies. These
# are Matt Zucker's degree-6 polynomial fits of its R, G and B (public domain), within 0.01 of
# matplotlib's table (tests/engine/test_heatmaps.py compares them), so no table is vendored.
_VIRIDIS_POLY = np.array(
    [
        [0.2777273272234177, 0.005407344544966578, 0.3340998053353061],
        [0.1050930431085774, 1.404613529898575, 1.384590162594685],
        [-0.3308618287255563, 0.214847559468213, 0.09509516302823659],
        [-4.634230498983486, -5.799100973351585, -19.33244095627987],
        [6.228269936347081, 14.17993336680509, 56.69055260068105],
        [4.776384997670288, -13.74514537774601, -65.35303263337234],
        [-5.435455855934631, 4.645852612178535, 26.3124352495832],
    ]
)


def _colour_lut() -> np.ndarray:
    """The colour map as a (256, 3) uint8 RGB table, entry i for the value i / 255."""
    x = np.linspace(0.0, 1.0, 256)[:, None]
    powers = x ** np.arange(len(_VIRIDIS_POLY))[None, :]
    rgb = np.clip(powers @ _VIRIDIS_POLY, 0.0, 1.0)
    return np.round(rgb * 255).astype(np.uint8)


COLOUR_MAP = _colour_lut()


def colour_stops(count: int = 9) -> list[tuple[float, str]]:
    """(fraction, "#rrggbb") stops of COLOUR_MAP, for the colour bar the page draws in CSS."""
    stops = []
    for i in range(count):
        fraction = i / (count - 1)
        r, g, b = COLOUR_MAP[round(fraction * 255)]
        stops.append((fraction, f"#{r:02x}{g:02x}{b:02x}"))
    return stops


# --------------------------------------------------------------------------------------------
# The library's normalisation (what tests compare with pytorch_grad_cam)


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
    (ReLU, min-max, bilinear resize to the input size, ReLU, min-max). `size` is S or (W, H).
    Each map is stretched to its own maximum: right for comparing with the library, wrong for
    showing findings side by side (see heat_layer)."""
    if isinstance(size, int):
        size = (size, size)
    cams = np.maximum(np.asarray(cams, dtype=np.float32), 0)
    scaled = _library_scale(cams, size)
    return _library_scale(np.maximum(scaled, 0), None)


# --------------------------------------------------------------------------------------------
# What the viewer shows


def case_scale(cams: Iterable) -> float:
    """The largest value over all raw maps of one prediction (0.0 when every map is empty): the
    common scale that makes the findings' layers comparable."""
    peaks = [float(np.max(np.maximum(np.asarray(cam, dtype=np.float32), 0), initial=0.0)) for cam in cams]
    return max(peaks, default=0.0)


def map_peaks(cams: dict) -> dict[str, float]:
    """Each finding's map maximum as a fraction of the case scale, in [0, 1] (0 for an empty map)."""
    scale = case_scale(cams.values())
    peaks = {}
    for name, cam in cams.items():
        peak = float(np.max(np.maximum(np.asarray(cam, dtype=np.float32), 0), initial=0.0))
        peaks[name] = peak / scale if scale > 0 else 0.0
    return peaks


def map_state(peak: float | None) -> str:
    """What a finding's layer shows, from its `map_peaks` value: "missing" (no map stored), "empty"
    (zero everywhere), "faint" (nothing above the cut-off on the case scale) or "shown"."""
    if peak is None:
        return "missing"
    if peak <= 0:
        return "empty"
    return "faint" if peak < CUT_OFF else "shown"


def heat_layer(cam: np.ndarray, size: tuple[int, int], *, scale: float | None = None) -> np.ndarray:
    """(h, w) raw map -> (H, W, 4) uint8 RGBA at `size` = (W, H).

    The map is upsampled bicubically (smooth, without the diamonds of bilinear on a 7x7 grid),
    divided by `scale` (the case scale; None: this map's own maximum), coloured with COLOUR_MAP and
    given opacity 0 below CUT_OFF, rising linearly to MAX_ALPHA at 1."""
    width, height = size
    cam = np.maximum(np.asarray(cam, dtype=np.float32), 0)
    if scale is None:
        scale = float(cam.max(initial=0.0))
    layer = np.zeros((height, width, 4), dtype=np.uint8)
    if scale <= 0 or not cam.any():
        return layer  # an empty map: nothing to draw
    upsampled = Image.fromarray(np.ascontiguousarray(cam / np.float32(scale))).resize(
        (width, height), Image.Resampling.BICUBIC
    )
    value = np.clip(np.asarray(upsampled, dtype=np.float32), 0.0, 1.0)
    layer[..., :3] = COLOUR_MAP[np.round(value * 255).astype(np.uint8)]
    alpha = MAX_ALPHA * np.clip((value - CUT_OFF) / (1.0 - CUT_OFF), 0.0, 1.0)
    layer[..., 3] = np.round(alpha * 255).astype(np.uint8)
    return layer


def heatmap_overlay_png(
    image: np.ndarray | tuple[int, int], cam: np.ndarray, *, scale: float | None = None, size: int = 512
) -> bytes:
    """The heat layer of one finding as an RGBA PNG with the X-ray's aspect ratio, longest side
    `size`, to lay over the X-ray. image: the X-ray's (width, height), or its (H, W) pixels, of
    which only the shape is used; cam: (h, w) raw map; scale: the case scale (`case_scale` of all
    the prediction's maps), None for the map's own."""
    if isinstance(image, tuple):
        width, height = image
    else:
        height, width = image.shape[:2]
    factor = size / max(height, width)
    out_w, out_h = max(1, round(width * factor)), max(1, round(height * factor))
    pixels = heat_layer(cam, (out_w, out_h), scale=scale)
    buffer = io.BytesIO()
    # Level 1: ~2x faster than 3 on a 512x512 layer, a few % larger.
    Image.fromarray(pixels, mode="RGBA").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()
