"""The forward pass that serves predictions: the version's ONNX graph run by ONNX Runtime. No Django
and no torch here.

Why ONNX Runtime: on this project's CPUs torch's eager DenseNet121 forward takes 1.7-1.8x as long as
ONNX Runtime's on the same weights (batch 1, 224x224, one thread: 79-86 ms against 46-47 ms on an
idle machine, measured by bench/run.py), and neither channels-last nor a frozen TorchScript graph
closed the gap. Why no torch: the graph is exported once, at registration (engine.export), and
stored beside the weights; a worker that only opens it never imports torch, and `import torch` alone
costs about 500 MB of resident memory per worker with the pinned (CUDA) build.

The graph returns the logits and every finding's class activation map in the same run, so heatmaps
cost no second pass (see engine.export for its inputs and outputs).

Shapes, for the starter model (224 input, 13 findings):
    ServingRuntime.run             (1, 3, 224, 224) float32 -> logits (13,), cams (13, 7, 7),
                                                               features (1024,)
    ServingRuntime.forward_features (1, 3, 224, 224) float32 -> logits (13,), features (1024,)
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

logger = logging.getLogger(__name__)

INPUT, LOGITS, CAMS, FEATURES = "input", "logits", "cams", "features"


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def threads_from_environment() -> int:
    """Intra-op threads per process: LUNGSITE_TORCH_THREADS (set per gunicorn worker by
    gunicorn.conf.py), else one per core this process may run on."""
    value = os.environ.get("LUNGSITE_TORCH_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            logger.warning("LUNGSITE_TORCH_THREADS=%r is not an integer; ignored", value)
    return available_cores()


def onnx_session(graph: bytes, threads: int):
    """An ONNX Runtime CPU session with `threads` intra-op threads and one inter-op thread (the graph
    is a chain; parallel branches would only fight for the same cores)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Spinning pool threads burn the cores that the other gunicorn workers need between runs.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


class ServingRuntime:
    """One version's serving graph opened in ONNX Runtime. Build it once per loaded version
    (`from_graph`); `run` is thread-safe, so gunicorn's threads share one runtime."""

    backend = "onnxruntime"

    def __init__(self, session, *, input_size: int, build_ms: float = 0.0) -> None:
        self.session = session
        self.input_size = input_size
        self.build_ms = build_ms

    @classmethod
    def from_graph(cls, graph: bytes, input_size: int = 224, *, threads: int | None = None) -> ServingRuntime:
        """Opens the graph (0.1-0.2 s for DenseNet121) with `threads` intra-op threads (default:
        threads_from_environment())."""
        started = time.perf_counter()
        session = onnx_session(graph, threads if threads else threads_from_environment())
        return cls(session, input_size=input_size, build_ms=(time.perf_counter() - started) * 1000)

    def _input(self, x) -> np.ndarray:
        array = np.ascontiguousarray(np.asarray(x), dtype=np.float32)
        if array.ndim != 4 or array.shape[0] != 1:
            raise ValueError(f"expected one image (1, C, S, S), got {array.shape}")
        return array

    def run(self, x) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """One image (1, C, S, S) float32 -> logits (K,), every finding's map (K, h, w) and the
        pooled features (C,)."""
        logits, cams, features = self.session.run([LOGITS, CAMS, FEATURES], {INPUT: self._input(x)})
        return logits[0], cams[0], pooled_features(features)[0]

    def forward_features(self, x) -> tuple[np.ndarray, np.ndarray]:
        """One image -> logits (K,) and the pooled features (C,): the classifier's input."""
        logits, features = self.session.run([LOGITS, FEATURES], {INPUT: self._input(x)})
        return logits[0], pooled_features(features)[0]


def pooled_features(features: np.ndarray) -> np.ndarray:
    """The graph's `features` output as (N, C). Graphs exported before that output was pooled give
    the trunk's map (N, C, h, w) instead; for the architectures of that time (DenseNet's norm5 before
    its ReLU, ResNet's layer4 after one) ReLU and the spatial mean give the same (N, C)."""
    features = np.asarray(features, dtype=np.float32)
    if features.ndim == 4:
        features = np.maximum(features, 0.0).mean(axis=(2, 3))
    return features
