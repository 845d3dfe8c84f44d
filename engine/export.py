"""The serving graph: a registered network and its closed-form Grad-CAM, exported to ONNX once, when
a version is registered, by `torch.onnx.export`. Needs torch; serving workers never import it (they
open the stored graph, engine.serving), and a worker that registers a version runs the export in
a child process (engine.weights.serving_graph_from_weights).

The exporter is torch's TorchScript-based one (`dynamo=False`): the default dynamo exporter of
torch 2.14 needs onnxscript, which this project does not install. DenseNet121 exports in seconds.

Outputs, for one image of the starter model (224 input, 13 findings):
    input     (N, 3, 224, 224) float32
    logits    (N, 13)            the classifier's outputs
    cams      (N, 13, 7, 7)      every finding's Grad-CAM map (see ServingModule)
    features  (N, 1024)          the classifier's input: the last feature map, global-average-pooled
                                 (after DenseNet's ReLU), for the out-of-distribution distance
                                 (learning.ood)
"""

from __future__ import annotations

import io
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from engine.architectures import architecture_get
from engine.serving import CAMS, FEATURES, INPUT, LOGITS

OPSET = 17


class ServingModule(nn.Module):
    """A global-average-pool + linear classifier returning, from one forward pass, its logits and
    every finding's Grad-CAM map, without a backward pass.

    With A the trunk's output (the Grad-CAM target layer's), P = ReLU(A) when the network applies a
    ReLU before pooling (DenseNet) or P = A when A is already the pooled activation (ResNet), the
    logits are W . mean_ij(P) + b. Grad-CAM's channel weight for finding c is the spatial mean of
    d logit_c / dA, i.e. alpha_ck = W[c, k] * mean_ij(dP_k/dA_k) / (h*w), where dP/dA is (A > 0) for
    the ReLU and 1 otherwise, and its map ReLU(sum_k alpha_ck * P_k) (pytorch_grad_cam sees P for
    DenseNet because torchvision applies that ReLU in place on the hooked tensor). All findings'
    maps are one (K x C) @ (C x h*w) product per image."""

    def __init__(self, model: nn.Module, architecture: str) -> None:
        super().__init__()
        spec = architecture_get(architecture)
        self.trunk = spec.trunk(model)
        self.head = spec.head(model)
        self.relu_before_pool = spec.relu_before_pool

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        features = self.trunk(x)  # (N, C, h, w)
        n, channels, h, w = features.shape
        if self.relu_before_pool:
            pooled_input = F.relu(features)
            slope = (features > 0).to(features.dtype).mean(dim=(2, 3))  # (N, C)
        else:
            pooled_input = features
            slope = torch.ones_like(features[:, :, 0, 0])
        pooled = pooled_input.mean(dim=(2, 3))  # (N, C)
        logits = self.head(pooled)  # (N, K)
        alpha = self.head.weight.unsqueeze(0) * (slope / (h * w)).unsqueeze(1)  # (N, K, C)
        cams = F.relu(alpha @ pooled_input.reshape(n, channels, h * w))  # (N, K, h*w)
        return logits, cams.reshape(n, -1, h, w), pooled


def onnx_graph(model: nn.Module, architecture: str, input_size: int, channels: int = 3) -> bytes:
    """The serialised ONNX serving graph of a network of `architecture` (inputs and outputs in the
    module docstring). Deterministic: the same weights give the same bytes, so stored graphs can be
    named by their sha256."""
    module = ServingModule(model.eval(), architecture).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # The TorchScript exporter announces its deprecation and traces with a few TracerWarnings
        # about shape arithmetic, which is exactly what the dynamic axes below declare.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,
            (torch.zeros(1, channels, input_size, input_size),),
            buffer,
            dynamo=False,
            input_names=[INPUT],
            output_names=[LOGITS, CAMS, FEATURES],
            dynamic_axes={
                INPUT: {0: "batch"},
                LOGITS: {0: "batch"},
                CAMS: {0: "batch"},
                FEATURES: {0: "batch"},
            },
            opset_version=OPSET,
        )
    return buffer.getvalue()
