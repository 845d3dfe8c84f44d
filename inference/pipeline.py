"""From a decoded picture (`inference.decode`) to findings and heatmaps: preprocess, one forward
pass. No Django here.

Shapes, for the starter model (224 input, 13 findings):
    preprocess  (H, W) float32                -> (1, 3, 224, 224) float32 (numpy)
    predict     (1, 3, 224, 224) float32      -> probabilities (13,), cams (13, 7, 7)
    cams_normalised (13, 7, 7)                -> (13, size, size) float32 in [0, 1]
    heatmap_overlay_png (H, W) + (7, 7)       -> PNG bytes
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from inference.serving import ServingRuntime


@dataclass(frozen=True)
class PredictionOutput:
    probabilities: np.ndarray  # (K,) float32, sigmoid outputs in the model's output order
    cams: np.ndarray  # (K, h, w) float32 Grad-CAM maps at feature-map resolution (ReLU applied)


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
    # 8-bit values are resized as floats (exact) and divided by 255 afterwards: that gives
    # `decode`'s floats resized, to float32 rounding, without converting the full-size picture.
    scale = np.float32(1.0 / 255.0 if image.dtype == np.uint8 else 1.0)
    plane = Image.fromarray(np.ascontiguousarray(image)).convert("F")
    image = np.asarray(plane.resize((size, size), Image.Resampling.BILINEAR)) * scale
    mean_a = np.asarray(mean[:channels], dtype=np.float32).reshape(channels, 1, 1)
    std_a = np.asarray(std[:channels], dtype=np.float32).reshape(channels, 1, 1)
    return ((image[None, :, :] - mean_a) / std_a)[None].astype(np.float32, copy=False)


def _sigmoid(logits) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


class NonFiniteOutput(ValueError):
    """The model gave scores or maps that are not finite numbers: nothing it says can be trusted."""


def predict(model: ServingRuntime, tensor: np.ndarray) -> PredictionOutput:
    """ONE forward pass: sigmoid probabilities (K,) and the Grad-CAM map (K, h, w) of every finding,
    both computed by the version's serving graph (inference.export.ServingModule: the closed form of
    Grad-CAM for a global-average-pool + linear head, no backward pass). `model` is what
    registry.cache serves; `tensor` is the (1, C, S, S) float32 array of `preprocess`.
    Raises NonFiniteOutput when the outputs are not all finite."""
    logits, cams = model.run(tensor)
    if not (np.isfinite(logits).all() and np.isfinite(cams).all()):
        raise NonFiniteOutput("The model gave scores or heatmaps that are not finite (NaN or infinity).")
    return PredictionOutput(probabilities=_sigmoid(logits), cams=np.asarray(cams, dtype=np.float32))


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
