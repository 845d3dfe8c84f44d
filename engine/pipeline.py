"""From a decoded picture (`engine.decode`) to findings and heatmaps: preprocess, one forward
pass. No Django here.

Shapes, for the starter model (224 input, 13 findings; C = the preprocessing's channels, 3 or 1):
    preprocess  (H, W) float32                -> (1, C, 224, 224) float32 (numpy)
    predict     (1, C, 224, 224) float32      -> probabilities (13,), cams (13, 7, 7), features (1024,)
The maps become pictures in engine/heatmaps.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from common.errors import NonFiniteOutput
from engine.preprocessing import preprocessing_complete
from engine.serving import ServingRuntime

__all__ = ["NonFiniteOutput", "PredictionOutput", "predict", "predict_batch", "preprocess"]


@dataclass(frozen=True)
class PredictionOutput:
    probabilities: np.ndarray  # (K,) float32, sigmoid outputs in the model's output order
    cams: np.ndarray  # (K, h, w) float32 Grad-CAM maps at feature-map resolution (ReLU applied)
    # (C,) float32: the pooled feature vector the classifier reads (the spatial mean of the last
    # feature map), e.g. for distances between cases.
    features: np.ndarray | None = None


# --------------------------------------------------------------------------------------------
# Preprocess and predict


def _centre_square(image: np.ndarray) -> np.ndarray:
    # xrv.datasets.XRayCenterCrop's arithmetic, so that the same pixels are kept.
    height, width = image.shape
    side = min(height, width)
    top, left = height // 2 - side // 2, width // 2 - side // 2
    return image[top : top + side, left : left + side]


def preprocess(image: np.ndarray, spec: dict) -> np.ndarray:
    """(H, W) float32 in [0, 1] (or uint8 from `decode_gray`) -> (1, C, S, S) float32, as the
    version's preprocessing says (engine.preprocessing): value range, crop, resize, then
    normalised per channel."""
    spec = preprocessing_complete(spec)
    size = int(spec["input_size"])
    channels = int(spec["channels"])
    lo, hi = (float(v) for v in spec["value_range"])
    mean = list(spec["mean"]) * (channels if len(spec["mean"]) == 1 else 1)
    std = list(spec["std"]) * (channels if len(spec["std"]) == 1 else 1)
    image = np.asarray(image)
    if spec["crop"] == "center":
        image = _centre_square(image)
    if spec["resize"] == "skimage":
        from skimage.transform import resize

        # The value range first: skimage's zero-valued edges are zero in that range, as in
        # TorchXRayVision's normalize -> XRayResizer order.
        plane = image.astype(np.float32)
        if image.dtype == np.uint8:
            plane /= np.float32(255.0)
        plane = plane * np.float32(hi - lo) + np.float32(lo)
        plane = resize(plane[None], (1, size, size), mode="constant", preserve_range=True)[0]
        plane = plane.astype(np.float32, copy=False)
    else:
        # 8-bit values are resized as floats (exact) and divided by 255 afterwards: that gives
        # `decode`'s floats resized, to float32 rounding, without converting the full-size picture.
        # Bilinear weights sum to one, so the value range can be applied after resizing.
        scale = np.float32(1.0 / 255.0 if image.dtype == np.uint8 else 1.0)
        resized = (
            Image.fromarray(np.ascontiguousarray(image))
            .convert("F")
            .resize((size, size), Image.Resampling.BILINEAR)
        )
        plane = np.asarray(resized) * scale
        if (lo, hi) != (0.0, 1.0):
            plane = plane * np.float32(hi - lo) + np.float32(lo)
    mean_a = np.asarray(mean[:channels], dtype=np.float32).reshape(channels, 1, 1)
    std_a = np.asarray(std[:channels], dtype=np.float32).reshape(channels, 1, 1)
    return ((plane[None, :, :] - mean_a) / std_a)[None].astype(np.float32, copy=False)


def _sigmoid(logits) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-np.asarray(logits, dtype=np.float64)))).astype(np.float32)


def predict(model: ServingRuntime, tensor: np.ndarray) -> PredictionOutput:
    """ONE forward pass: sigmoid probabilities (K,), the Grad-CAM map (K, h, w) of every finding and
    the pooled feature vector (C,), all computed by the version's serving graph
    (engine.export.ServingModule: the closed form of Grad-CAM for a global-average-pool + linear
    head, no backward pass). `model` is what
    registry.cache serves; `tensor` is the (1, C, S, S) float32 array of `preprocess`.
    Raises NonFiniteOutput when the outputs are not all finite."""
    logits, cams, features = model.run_all(tensor)
    if not (np.isfinite(logits).all() and np.isfinite(cams).all()):
        raise NonFiniteOutput("The model gave scores or heatmaps that are not finite (NaN or infinity).")
    return PredictionOutput(
        probabilities=_sigmoid(logits),
        cams=np.asarray(cams, dtype=np.float32),
        features=np.asarray(features, dtype=np.float32),
    )


def predict_batch(model: ServingRuntime, batch: np.ndarray) -> list[PredictionOutput]:
    """One forward pass over a batch (jobs/): (N, C, S, S) float32 (rows of `preprocess`) -> N
    outputs, each what `predict` gives for that row alone (probabilities (K,), cams (K, h, w),
    features (C,)); the
    serving graph takes any batch size. Raises NonFiniteOutput when any output is not finite."""
    from engine.serving import CAMS, FEATURES, INPUT, LOGITS

    batch = np.ascontiguousarray(batch, dtype=np.float32)
    logits, cams, features = model.session.run([LOGITS, CAMS, FEATURES], {INPUT: batch})
    if not (np.isfinite(logits).all() and np.isfinite(cams).all()):
        raise NonFiniteOutput("The model gave scores or heatmaps that are not finite (NaN or infinity).")
    probabilities = _sigmoid(logits)
    cams = np.asarray(cams, dtype=np.float32)
    features = np.asarray(features, dtype=np.float32)
    return [
        PredictionOutput(probabilities=probabilities[i], cams=cams[i], features=features[i])
        for i in range(len(batch))
    ]
