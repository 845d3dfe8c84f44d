"""An INT8 serving graph from an FP32 one: ONNX Runtime's static quantization (QDQ format),
calibrated on real images. No Django, no torch.

`quantize_int8(graph, tensors)` runs `onnxruntime.quantization.quantize_static` on the serving
graph (engine.export: logits, every finding's Grad-CAM map, the feature map): the trunk's
convolutions get 8-bit weights (per output channel) and 8-bit activations whose ranges come from
running the FP32 graph on `tensors` (preprocessed real images, MinMax calibration). The head (the
one Linear layer and the closed-form Grad-CAM maps built from it) stays FP32, so the maps are
computed from the quantized trunk's features exactly as the FP32 graph computes them.

`compare(fp32, int8, tensors)` says how far the two graphs' outputs are apart on images: what the
registration records and the benchmark reports.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

# Only these are quantized: the convolutions are nearly all of DenseNet121's and ResNet50's time.
QUANTIZED_OPS = ["Conv"]
# At least this many images calibrate the activation ranges; more give steadier ranges.
MIN_CALIBRATION_IMAGES = 8


class _Reader:
    """onnxruntime.quantization.CalibrationDataReader: one (1, 3, S, S) input per call."""

    def __init__(self, input_name: str, tensors: Iterable[np.ndarray]) -> None:
        self._items = iter(
            [{input_name: np.asarray(t, dtype=np.float32).reshape(1, *t.shape[-3:])} for t in tensors]
        )

    def get_next(self):
        return next(self._items, None)


def quantize_int8(graph: bytes, tensors: list[np.ndarray]) -> bytes:
    """The INT8 (QDQ) version of an FP32 serving graph, calibrated on `tensors` (each (3, S, S) or
    (1, 3, S, S), preprocessed as the version's images are). Raises ValueError with fewer than
    MIN_CALIBRATION_IMAGES."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )

    if len(tensors) < MIN_CALIBRATION_IMAGES:
        raise ValueError(
            f"INT8 calibration needs at least {MIN_CALIBRATION_IMAGES} images; {len(tensors)} were given."
        )
    model = onnx.load_from_string(graph)
    input_name = model.graph.input[0].name

    class Reader(_Reader, CalibrationDataReader):
        pass

    with tempfile.TemporaryDirectory(prefix="lungsite-int8-") as folder:
        source, target = Path(folder) / "fp32.onnx", Path(folder) / "int8.onnx"
        source.write_bytes(graph)
        quantize_static(
            str(source),
            str(target),
            Reader(input_name, tensors),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=QUANTIZED_OPS,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        return target.read_bytes()


def compare(fp32, int8, tensors: list[np.ndarray]) -> dict:
    """How far two runtimes (engine.serving.ServingRuntime of the FP32 and the INT8 graph) are
    apart on `tensors`: the largest probability difference, and the Pearson correlation of each
    finding's Grad-CAM map (as the viewer scales them, engine.heatmaps.cams_normalised) between
    the two, as its 5th percentile and minimum over maps that are not empty."""
    from engine.heatmaps import cams_normalised

    largest, correlations = 0.0, []
    for tensor in tensors:
        batch = np.asarray(tensor, dtype=np.float32).reshape(1, *tensor.shape[-3:])
        (logits_a, cams_a), (logits_b, cams_b) = fp32.run(batch), int8.run(batch)
        p_a, p_b = _sigmoid(logits_a), _sigmoid(logits_b)
        largest = max(largest, float(np.max(np.abs(p_a - p_b))))
        size = batch.shape[-1]
        for cam_a, cam_b in zip(cams_normalised(cams_a, size), cams_normalised(cams_b, size), strict=True):
            if cam_a.std() > 0 and cam_b.std() > 0:
                correlations.append(float(np.corrcoef(cam_a.ravel(), cam_b.ravel())[0, 1]))
    return {
        "images": len(tensors),
        "max_abs_probability_diff": round(largest, 5),
        "heatmap_correlation_p05": round(float(np.percentile(correlations, 5)), 4) if correlations else None,
        "heatmap_correlation_min": round(min(correlations), 4) if correlations else None,
    }


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.asarray(x, dtype=np.float64)))
