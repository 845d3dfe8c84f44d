"""From a decoded picture (`engine.decode`) to findings and heatmaps: preprocess, one forward
pass. No Django here.

Shapes, for the starter model (224 input, 13 findings):
    preprocess  (H, W) float32                -> (1, 3, 224, 224) float32 (numpy)
    predict     (1, 3, 224, 224) float32      -> probabilities (13,), cams (13, 7, 7), features (1024,)
The maps become pictures in engine/heatmaps.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.errors import NonFiniteOutput
from engine.serving import ServingRuntime

__all__ = ["NonFiniteOutput", "PredictionOutput", "predict", "predict_batch", "preprocess"]


@dataclass(frozen=True)
class PredictionOutput:
    probabilities: np.ndarray  # (K,) float32, sigmoid outputs in the model's output order
    cams: np.ndarray  # (K, h, w) float32 Grad-CAM maps at feature-map resolution (ReLU applied)
    features: np.ndarray | None = None  # (C,) float32 pooled last feature map (the head's input)


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


def predict(model: ServingRuntime, tensor: np.ndarray) -> PredictionOutput:
    """ONE forward pass: sigmoid probabilities (K,) and the Grad-CAM map (K, h, w) of every finding,
    both computed by the version's serving graph (engine.export.ServingModule: the closed form of
    Grad-CAM for a global-average-pool + linear head, no backward pass). `model` is what
    registry.cache serves; `tensor` is the (1, C, S, S) float32 array of `preprocess`.
    Raises NonFiniteOutput when the outputs are not all finite."""
    logits, cams, features = model.run(tensor)
    if not (np.isfinite(logits).all() and np.isfinite(cams).all()):
        raise NonFiniteOutput("The model gave scores or heatmaps that are not finite (NaN or infinity).")
    return PredictionOutput(
        probabilities=_sigmoid(logits), cams=np.asarray(cams, dtype=np.float32), features=features
    )


def predict_batch(model: ServingRuntime, batch: np.ndarray) -> list[PredictionOutput]:
    """One forward pass over a batch (jobs/): (N, C, S, S) float32 (rows of `preprocess`) -> N
    outputs, each what `predict` gives for that row alone (probabilities (K,), cams (K, h, w),
    features (C,)); the serving graph takes any batch size. Raises NonFiniteOutput when any output
    is not finite."""
    from engine.serving import CAMS, FEATURES, INPUT, LOGITS, pooled_features

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    logits, cams, features = model.session.run([LOGITS, CAMS, FEATURES], {INPUT: batch})
    if not (np.isfinite(logits).all() and np.isfinite(cams).all()):
        raise NonFiniteOutput("The model gave scores or heatmaps that are not finite (NaN or infinity).")
    probabilities = _sigmoid(logits)
    cams = np.asarray(cams, dtype=np.float32)
    features = pooled_features(features)
    return [
        PredictionOutput(probabilities=probabilities[i], cams=cams[i], features=features[i])
        for i in range(len(batch))
    ]
