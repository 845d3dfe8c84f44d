"""The forward pass that serves predictions: the model's network run by ONNX Runtime. No Django here.

Why ONNX Runtime: on this project's CPUs torch's eager DenseNet121 forward takes 1.7-1.8x as long as
ONNX Runtime's on the same weights (batch 1, 224x224, one thread: 79-86 ms against 46-47 ms on an
idle machine, measured by bench/run.py), and neither channels-last nor a frozen TorchScript graph
closed the gap.

The ONNX graph is written here from the loaded module's own tensors rather than traced by
`torch.onnx.export`: tracing DenseNet121 took 1.3-3.5 s here (a hot swap would wait that long in
every worker), writing the graph takes 0.15-0.4 s and opening the session 0.1-0.2 s, and it does not
depend on torch's deprecated TorchScript exporter (nor on onnxscript, which the default dynamo
exporter of torch 2.14 needs and this project does not install).

The graph has two outputs, the logits and the last feature map (norm5, before the ReLU), so every
finding's class activation map is a small matrix product on its output (`class_activation_maps`),
with no second pass.

Shapes, for the starter model (224 input, 13 findings):
    forward_features  (1, 3, 224, 224) float32  -> logits (13,), features (1024, 7, 7)
    class_activation_maps (1024, 7, 7), (13, 1024) -> (13, 7, 7)
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

logger = logging.getLogger(__name__)

OPSET = 17
INPUT, LOGITS, FEATURES = "input", "logits", "features"


class UnsupportedModel(Exception):
    """The module holds a layer the graph writer does not know; it is served by torch instead."""


def threads_from_environment() -> int:
    """Intra-op threads per process: LUNGSITE_TORCH_THREADS (set per gunicorn worker by
    gunicorn.conf.py), else torch's own setting."""
    value = os.environ.get("LUNGSITE_TORCH_THREADS", "").strip()
    if value:
        try:
            return max(1, int(value))
        except ValueError:
            logger.warning("LUNGSITE_TORCH_THREADS=%r is not an integer; ignored", value)
    return max(1, torch.get_num_threads())


def linear_head(model: nn.Module) -> nn.Linear:
    """The classifier's Linear layer (a CheXNet-style Sequential(Linear, Sigmoid) head included)."""
    head = model.classifier
    if isinstance(head, nn.Sequential):
        head = next(m for m in head if isinstance(m, nn.Linear))
    return head


def class_activation_maps(features: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Grad-CAM of every finding from the last feature map, as `inference.pipeline.predict`
    computes it in torch: features (C, h, w) norm5 output, weight (K, C) -> (K, h, w) float32.

    Finding c's channel weight is W[c, k] * mean_ij(A_k > 0) / (h*w) and its map
    ReLU(sum_k weight_k * ReLU(A_k))."""
    channels, h, w = features.shape
    flat = features.reshape(channels, h * w)
    positive = (flat > 0).mean(axis=1, dtype=np.float32) / np.float32(h * w)  # (C,)
    maps = (weight * positive[None, :]) @ np.maximum(flat, 0)  # (K, h*w)
    return np.maximum(maps, 0).reshape(-1, h, w).astype(np.float32, copy=False)


# --------------------------------------------------------------------------------------------
# The ONNX graph, written from the module


class _GraphWriter:
    """Walks a torchvision DenseNet's `features` and writes the same computation as ONNX nodes,
    with the module's tensors as initializers (copied: the graph does not follow later changes)."""

    def __init__(self) -> None:
        self.nodes: list = []
        self.initializers: list = []
        self._count = 0

    def name(self, hint: str) -> str:
        self._count += 1
        return f"{hint}_{self._count}"

    def constant(self, hint: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.name(hint)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array, dtype=np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], hint: str, output: str | None = None, **attrs) -> str:
        from onnx import helper

        output = output or self.name(hint)
        self.nodes.append(helper.make_node(op, inputs, [output], name=output, **attrs))
        return output

    def module(self, module: nn.Module, x: str, hint: str) -> str:
        from torchvision.models.densenet import _DenseBlock

        if isinstance(module, _DenseBlock):
            return self.dense_block(module, x, hint)
        if isinstance(module, nn.Sequential):  # DenseNet.features and _Transition
            for child_name, child in module.named_children():
                x = self.module(child, x, f"{hint}.{child_name}" if hint else child_name)
            return x
        if isinstance(module, nn.Conv2d):
            return self.conv(module, x, hint)
        if isinstance(module, nn.BatchNorm2d):
            return self.batch_norm(module, x, hint)
        if isinstance(module, nn.ReLU):
            return self.node("Relu", [x], hint)
        if isinstance(module, nn.MaxPool2d):
            return self.pool("MaxPool", module, x, hint)
        if isinstance(module, nn.AvgPool2d):
            return self.pool("AveragePool", module, x, hint)
        raise UnsupportedModel(f"no ONNX translation for {hint} ({type(module).__name__})")

    def dense_block(self, block: nn.Module, x: str, hint: str) -> str:
        # torchvision concatenates all earlier outputs in every layer; a running concatenation
        # gives the same tensor with less copying.
        for layer_name, layer in block.named_children():
            if getattr(layer, "drop_rate", 0) and layer.training:
                raise UnsupportedModel(f"{hint}.{layer_name} is in training mode with dropout")
            h = self.module(layer.norm1, x, f"{hint}.{layer_name}.norm1")
            h = self.module(layer.relu1, h, f"{hint}.{layer_name}.relu1")
            h = self.module(layer.conv1, h, f"{hint}.{layer_name}.conv1")
            h = self.module(layer.norm2, h, f"{hint}.{layer_name}.norm2")
            h = self.module(layer.relu2, h, f"{hint}.{layer_name}.relu2")
            h = self.module(layer.conv2, h, f"{hint}.{layer_name}.conv2")
            x = self.node("Concat", [x, h], f"{hint}.{layer_name}.cat", axis=1)
        return x

    def conv(self, conv: nn.Conv2d, x: str, hint: str) -> str:
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            raise UnsupportedModel(f"{hint}: padding {conv.padding!r}/{conv.padding_mode}")
        inputs = [x, self.constant(f"{hint}.weight", conv.weight.detach().numpy())]
        if conv.bias is not None:
            inputs.append(self.constant(f"{hint}.bias", conv.bias.detach().numpy()))
        pad_h, pad_w = conv.padding
        return self.node(
            "Conv",
            inputs,
            hint,
            kernel_shape=list(conv.kernel_size),
            strides=list(conv.stride),
            pads=[pad_h, pad_w, pad_h, pad_w],
            dilations=list(conv.dilation),
            group=conv.groups,
        )

    def batch_norm(self, norm: nn.BatchNorm2d, x: str, hint: str) -> str:
        if norm.running_mean is None or norm.training:
            raise UnsupportedModel(f"{hint}: batch norm without running statistics or in training mode")
        channels = norm.num_features
        weight = norm.weight.detach().numpy() if norm.weight is not None else np.ones(channels)
        bias = norm.bias.detach().numpy() if norm.bias is not None else np.zeros(channels)
        return self.node(
            "BatchNormalization",
            [
                x,
                self.constant(f"{hint}.weight", weight),
                self.constant(f"{hint}.bias", bias),
                self.constant(f"{hint}.running_mean", norm.running_mean.numpy()),
                self.constant(f"{hint}.running_var", norm.running_var.numpy()),
            ],
            hint,
            epsilon=float(norm.eps),
        )

    def pool(self, op: str, pool: nn.Module, x: str, hint: str) -> str:
        def pair(value):
            return list(value) if isinstance(value, tuple | list) else [value, value]

        kernel, stride, padding = (
            pair(pool.kernel_size),
            pair(pool.stride or pool.kernel_size),
            pair(pool.padding),
        )
        if getattr(pool, "dilation", 1) not in (1, (1, 1)):
            raise UnsupportedModel(f"{hint}: dilated pooling")
        attrs = {"ceil_mode": int(pool.ceil_mode)}
        if op == "AveragePool":
            if getattr(pool, "divisor_override", None):
                raise UnsupportedModel(f"{hint}: divisor_override")
            attrs["count_include_pad"] = int(pool.count_include_pad)
        return self.node(op, [x], hint, kernel_shape=kernel, strides=stride, pads=padding + padding, **attrs)


def onnx_graph(model: nn.Module, input_size: int, channels: int = 3) -> bytes:
    """The serialised ONNX model of a torchvision DenseNet in eval mode: input `input`
    (N, channels, S, S) float32; outputs `logits` (N, K) and `features` (N, C, h, w), the norm5
    output before the ReLU. Raises UnsupportedModel for a module it cannot translate."""
    from onnx import TensorProto, helper

    if not hasattr(model, "features") or not hasattr(model, "classifier"):
        raise UnsupportedModel(f"{type(model).__name__} has no DenseNet features/classifier")
    writer = _GraphWriter()
    last = writer.module(model.features, INPUT, "")
    # The last node of `features` (norm5) writes the `features` output directly.
    assert writer.nodes[-1].output[0] == last
    writer.nodes[-1].output[0] = FEATURES
    activated = writer.node("Relu", [FEATURES], "head.relu")
    pooled = writer.node("GlobalAveragePool", [activated], "head.pool")
    flat = writer.node("Flatten", [pooled], "head.flatten", axis=1)
    head = linear_head(model)
    inputs = [flat, writer.constant("classifier.weight", head.weight.detach().numpy())]
    if head.bias is not None:
        inputs.append(writer.constant("classifier.bias", head.bias.detach().numpy()))
    writer.node("Gemm", inputs, "head.gemm", output=LOGITS, transB=1)

    graph = helper.make_graph(
        writer.nodes,
        "lungsite_serving",
        [
            helper.make_tensor_value_info(
                INPUT, TensorProto.FLOAT, ["batch", channels, input_size, input_size]
            )
        ],
        [
            helper.make_tensor_value_info(LOGITS, TensorProto.FLOAT, ["batch", head.out_features]),
            helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", None, None, None]),
        ],
        initializer=writer.initializers,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="lungsite")
    proto.ir_version = 8  # what every onnxruntime since 1.10 reads
    return proto.SerializeToString()


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


# --------------------------------------------------------------------------------------------
# The runtime


class ServingRuntime(nn.Module):
    """A loaded DenseNet plus the fast forward pass that serves it.

    It is still the torch module (same `features` and `classifier` submodules, `forward` is
    torchvision's), so everything that reads the model (tests, the Grad-CAM reference) keeps
    working; `forward_features` is the serving path. Build it once per loaded version
    (`from_model`); the ONNX Runtime session holds a copy of the weights, so the module must not
    be changed afterwards. `session.run` is thread-safe: gunicorn's threads share one runtime."""

    def __init__(self, model: nn.Module, *, input_size: int, session=None, build_ms: float = 0.0) -> None:
        super().__init__()
        self.features = model.features
        self.classifier = model.classifier
        self.input_size = input_size
        self.session = session
        self.build_ms = build_ms
        self._head_weight = linear_head(model).weight.detach().numpy().astype(np.float32, copy=True)
        self.eval()

    @classmethod
    def from_model(
        cls, model: nn.Module, input_size: int = 224, *, threads: int | None = None
    ) -> ServingRuntime:
        """Writes the model's ONNX graph and opens an ONNX Runtime session on it (0.25-0.6 s for
        DenseNet121) with `threads` intra-op threads (default: threads_from_environment()). A module
        the writer cannot translate is served by torch, with a warning."""
        started = time.perf_counter()
        model.eval()
        try:
            graph = onnx_graph(model, input_size)
            session = onnx_session(graph, threads if threads else threads_from_environment())
        except UnsupportedModel as exc:
            logger.warning("serving with torch (slower): %s", exc)
            session = None
        return cls(
            model, input_size=input_size, session=session, build_ms=(time.perf_counter() - started) * 1000
        )

    @property
    def backend(self) -> str:
        return "onnxruntime" if self.session is not None else "torch"

    @property
    def head_weight(self) -> np.ndarray:
        """(K, C) float32: the classifier weight that turns features into maps."""
        return self._head_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """torchvision's DenseNet forward in torch (the reference path): logits (N, K)."""
        out = F.relu(self.features(x))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, (1, 1)), 1))

    def forward_features(self, x: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image (1, C, S, S) float32 -> logits (K,) and the norm5 feature map (C, h, w)."""
        array = x.detach().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
        array = np.ascontiguousarray(array, dtype=np.float32)
        if array.ndim != 4 or array.shape[0] != 1:
            raise ValueError(f"expected one image (1, C, S, S), got {array.shape}")
        if self.session is None:
            with torch.inference_mode():
                features = self.features(torch.from_numpy(array))
                logits = F.linear(F.relu(features).mean(dim=(2, 3)), *self._head_tensors())
            return logits[0].numpy().copy(), features[0].numpy().copy()
        logits, features = self.session.run([LOGITS, FEATURES], {INPUT: array})
        return logits[0], features[0]

    def _head_tensors(self):
        head = linear_head(self)
        return head.weight, head.bias
