"""The serving graph: a torchvision DenseNet written out as ONNX, once, when a version is registered.

Needs torch (it reads the module's tensors); the workers that serve never import this module when
the graph is stored (registry.storage), so they never load torch (`import torch` alone takes about
500 MB of resident memory with the pinned CUDA build).

The graph is written from the loaded module's own tensors rather than traced by `torch.onnx.export`:
tracing DenseNet121 took 1.3-3.5 s here, writing the graph 0.15-0.4 s, and it needs neither torch's
deprecated TorchScript exporter nor onnxscript (which the default dynamo exporter of torch 2.14
needs and this project does not install).

Outputs, for one image of the starter model (224 input, 13 findings):
    input     (N, 3, 224, 224) float32
    logits    (N, 13)            the classifier's outputs
    cams      (N, 13, 7, 7)      every finding's Grad-CAM map (inference.serving.class_activation_maps)
    features  (N, 1024, 7, 7)    the norm5 feature map, before the ReLU (for tests and diagnostics)
The maps are computed in the graph from the feature map and the classifier weight: one small matrix
product, no backward pass (see inference.pipeline.predict for why that is Grad-CAM).
"""

from __future__ import annotations

import numpy as np
from torch import nn

from inference.serving import CAMS, FEATURES, INPUT, LOGITS

OPSET = 17
# Bump when the graph written for the same weights changes: stored graphs are named by content, so a
# new writer gives new files and rows keep pointing at the graph that actually served.
WRITER_VERSION = 2


class UnsupportedModel(Exception):
    """The module holds a layer the graph writer does not know; it is served by torch instead."""


def linear_head(model: nn.Module) -> nn.Linear:
    """The classifier's Linear layer (a CheXNet-style Sequential(Linear, Sigmoid) head included)."""
    head = model.classifier
    if isinstance(head, nn.Sequential):
        head = next(m for m in head if isinstance(m, nn.Linear))
    return head


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


def _int64(writer: _GraphWriter, hint: str, values: list[int]) -> str:
    from onnx import numpy_helper

    name = writer.name(hint)
    writer.initializers.append(numpy_helper.from_array(np.asarray(values, dtype=np.int64), name))
    return name


def _class_activation_maps(writer: _GraphWriter, features: str, weight: str) -> str:
    """Nodes computing every finding's map from `features` (N, C, h, w) and the classifier weight
    (K, C), as inference.serving.class_activation_maps does in numpy:
    ReLU((W * mean_ij(A > 0) / (h*w)) @ ReLU(A)) -> (N, K, h, w)."""
    activated = writer.node("Relu", [features], "cam.relu")
    flat = writer.node("Reshape", [activated, _int64(writer, "cam.flat_shape", [0, 0, -1])], "cam.flat")
    positive = writer.node(
        "Cast",
        [writer.node("Greater", [features, writer.constant("cam.zero", np.zeros(1))], "cam.gt")],
        "cam.positive",
        to=1,  # FLOAT
    )
    share = writer.node("ReduceMean", [positive], "cam.share", axes=[2, 3], keepdims=0)  # (N, C)
    area = writer.node("Cast", [writer.node("Shape", [flat], "cam.hw_shape", start=2, end=3)], "cam.hw", to=1)
    scaled = writer.node("Div", [share, area], "cam.scaled")
    channel = writer.node(
        "Unsqueeze", [scaled, _int64(writer, "cam.axis", [1])], "cam.unsqueeze"
    )  # (N, 1, C)
    weights = writer.node("Mul", [channel, weight], "cam.weights")  # (N, K, C)
    maps = writer.node("Relu", [writer.node("MatMul", [weights, flat], "cam.matmul")], "cam.maps")
    shape = writer.node(
        "Concat",
        [
            writer.node("Shape", [maps], "cam.nk", start=0, end=2),
            writer.node("Shape", [features], "cam.spatial", start=2, end=4),
        ],
        "cam.shape",
        axis=0,
    )
    return writer.node("Reshape", [maps, shape], "cam.reshape", output=CAMS)


def onnx_graph(model: nn.Module, input_size: int, channels: int = 3) -> bytes:
    """The serialised ONNX model of a torchvision DenseNet in eval mode (input and outputs in the
    module docstring). Deterministic: the same weights give the same bytes. Raises UnsupportedModel
    for a module it cannot translate."""
    from onnx import TensorProto, helper

    if not hasattr(model, "features") or not hasattr(model, "classifier"):
        raise UnsupportedModel(f"{type(model).__name__} has no DenseNet features/classifier")
    model.eval()
    writer = _GraphWriter()
    last = writer.module(model.features, INPUT, "")
    # The last node of `features` (norm5) writes the `features` output directly.
    assert writer.nodes[-1].output[0] == last
    writer.nodes[-1].output[0] = FEATURES
    activated = writer.node("Relu", [FEATURES], "head.relu")
    pooled = writer.node("GlobalAveragePool", [activated], "head.pool")
    flat = writer.node("Flatten", [pooled], "head.flatten", axis=1)
    head = linear_head(model)
    weight = writer.constant("classifier.weight", head.weight.detach().numpy())
    inputs = [flat, weight]
    if head.bias is not None:
        inputs.append(writer.constant("classifier.bias", head.bias.detach().numpy()))
    writer.node("Gemm", inputs, "head.gemm", output=LOGITS, transB=1)
    _class_activation_maps(writer, FEATURES, weight)

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
            helper.make_tensor_value_info(CAMS, TensorProto.FLOAT, ["batch", head.out_features, None, None]),
            helper.make_tensor_value_info(FEATURES, TensorProto.FLOAT, ["batch", None, None, None]),
        ],
        initializer=writer.initializers,
    )
    proto = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="lungsite",
        producer_version=str(WRITER_VERSION),
    )
    proto.ir_version = 8  # what every onnxruntime since 1.10 reads
    return proto.SerializeToString(deterministic=True)


def serving_graph(model: nn.Module, input_size: int) -> bytes | None:
    """The model's serving graph, or None (with the reason logged) when it cannot be written and the
    version must be served by torch."""
    import logging

    try:
        return onnx_graph(model, input_size)
    except UnsupportedModel as exc:
        logging.getLogger(__name__).warning("no ONNX serving graph, it will be served by torch: %s", exc)
        return None


def main(argv: list[str] | None = None) -> int:
    """`python -m inference.export --architecture=A --num-classes=K --input-size=S`: the weights file
    on stdin; the serving graph on stdout (exit 0), or the reason on stderr's last line with
    inference.weights.REFUSED_EXIT (the weights do not load) or NO_GRAPH_EXIT (served by torch).
    inference.weights.serving_graph_from_weights runs it for processes that must stay torch-free."""
    import argparse
    import sys

    from inference.weights import NO_GRAPH_EXIT, REFUSED_EXIT, WeightsError, load_model

    parser = argparse.ArgumentParser(prog="python -m inference.export", description=main.__doc__)
    parser.add_argument("--architecture", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--input-size", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        data = sys.stdin.buffer.read()
        model = load_model(data, architecture=args.architecture, num_classes=args.num_classes)
    except WeightsError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return REFUSED_EXIT
    try:
        graph = onnx_graph(model, args.input_size)
    except UnsupportedModel as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return NO_GRAPH_EXIT
    sys.stdout.buffer.write(graph)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
