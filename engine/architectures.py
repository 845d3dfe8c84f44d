"""The networks the registry accepts: one table entry per architecture. No Django here.

Every entry is a torchvision classifier whose head is global-average-pool + one Linear layer over
its last feature map (ConvNeXt puts a LayerNorm between the two), so one export (engine.export)
and one closed-form Grad-CAM serve them all. An entry says how to build the network, which module
gives that feature map (the Grad-CAM target layer is its last module), whether a ReLU sits between
that map and the pooling, which Linear is the head, which convolution takes the input (so that a
network can take one channel, as TorchXRayVision's do), and how the key names of known checkpoint
layouts are rewritten to torchvision's.

Transformers (ViT, Swin) are not in the table: their heads read a class token or the last stage's
tokens after attention, not a pooled convolutional map, so the closed-form Grad-CAM of the export
does not hold for them (see docs/models.md).

torch and torchvision are imported inside the functions: `ARCHITECTURES` (the names) is read by
the admin and the registry services in processes that never load torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> untrained 3-channel network (logits out)
    trunk: Callable[[nn.Module], nn.Module]  # network -> the module whose output A is pooled
    head_name: str  # dotted path of the Linear classifier ("<head_name>.weight" in a state_dict)
    # True when the network applies ReLU to A before pooling (DenseNet: `features` ends with norm5);
    # False when A is what is pooled (ResNet's layer4 and EfficientNet's last block end with their
    # activation; ConvNeXt pools its last stage as it is).
    relu_before_pool: bool
    first_conv: str  # dotted path of the Conv2d that takes the input image
    # Dotted path of a LayerNorm applied to the pooled vector before the head (ConvNeXt), or None.
    head_norm: str | None = None
    # (pattern, replacement) applied in order to every checkpoint key, after `module.` prefixes
    # (DataParallel) are stripped.
    key_rewrites: tuple[tuple[re.Pattern, str], ...] = ()

    def head(self, model: nn.Module) -> nn.Linear:
        return model.get_submodule(self.head_name)

    def norm(self, model: nn.Module) -> nn.Module | None:
        return None if self.head_norm is None else model.get_submodule(self.head_norm)

    def target_layer(self, model: nn.Module) -> nn.Module:
        """The layer pytorch_grad_cam.GradCAM is given to reproduce the served maps."""
        trunk = self.trunk(model)
        return list(trunk.children())[-1]

    def channels_of(self, state: dict[str, torch.Tensor]) -> int | None:
        """How many input channels the weights' first convolution takes (None: not in `state`)."""
        weight = state.get(f"{self.first_conv}.weight")
        return int(weight.shape[1]) if weight is not None and weight.ndim == 4 else None

    def build_for(self, num_classes: int, channels: int = 3) -> nn.Module:
        """An untrained network with `num_classes` outputs whose first convolution takes `channels`
        input channels (TorchXRayVision's networks take 1: the grey image itself)."""
        model = self.build(num_classes)
        if channels != 3:
            from torch import nn

            old = model.get_submodule(self.first_conv)
            parent_name, _, attribute = self.first_conv.rpartition(".")
            parent = model.get_submodule(parent_name) if parent_name else model
            setattr(
                parent,
                attribute,
                nn.Conv2d(
                    channels,
                    old.out_channels,
                    kernel_size=old.kernel_size,
                    stride=old.stride,
                    padding=old.padding,
                    dilation=old.dilation,
                    groups=old.groups,
                    bias=old.bias is not None,
                    padding_mode=old.padding_mode,
                ),
            )
        return model


def _densenet121(num_classes: int) -> nn.Module:
    from torchvision.models import densenet121

    return densenet121(weights=None, num_classes=num_classes)


def _resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


def _efficientnet_b0(num_classes: int) -> nn.Module:
    from torchvision.models import efficientnet_b0

    return efficientnet_b0(weights=None, num_classes=num_classes)


def _convnext_tiny(num_classes: int) -> nn.Module:
    from torchvision.models import convnext_tiny

    return convnext_tiny(weights=None, num_classes=num_classes)


def _resnet_trunk(model: nn.Module) -> nn.Module:
    from torch import nn

    # torchvision's ResNet.forward up to the pooling, as one module (the children are shared,
    # not copied).
    return nn.Sequential(
        model.conv1,
        model.bn1,
        model.relu,
        model.maxpool,
        model.layer1,
        model.layer2,
        model.layer3,
        model.layer4,
    )


ARCHITECTURE_TABLE: dict[str, Architecture] = {
    "densenet121": Architecture(
        name="densenet121",
        build=_densenet121,
        trunk=lambda model: model.features,
        head_name="classifier",
        relu_before_pool=True,
        first_conv="features.conv0",
        key_rewrites=(
            # CheXNet reproductions wrap torchvision's model in an attribute of that name.
            (re.compile(r"^densenet121\."), ""),
            # torchvision < 0.3 named DenseNet layers "norm.1" where torchvision now says "norm1";
            # torchvision's own loader rewrites them with the same pattern.
            (
                re.compile(
                    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
                ),
                r"\1\2",
            ),
            # CheXNet's Sequential(Linear, Sigmoid) head.
            (re.compile(r"^classifier\.0\."), "classifier."),
        ),
    ),
    "resnet50": Architecture(
        name="resnet50",
        build=_resnet50,
        trunk=_resnet_trunk,
        head_name="fc",
        relu_before_pool=False,
        first_conv="conv1",
        key_rewrites=(
            (re.compile(r"^resnet50\."), ""),
            # TorchXRayVision's ResNet holds torchvision's in an attribute named `model`.
            (re.compile(r"^model\."), ""),
        ),
    ),
    "efficientnet_b0": Architecture(
        name="efficientnet_b0",
        build=_efficientnet_b0,
        # features[-1] is Conv2d + BatchNorm + SiLU: its output is what avgpool averages.
        trunk=lambda model: model.features,
        head_name="classifier.1",  # classifier = Sequential(Dropout, Linear)
        relu_before_pool=False,
        first_conv="features.0.0",
    ),
    "convnext_tiny": Architecture(
        name="convnext_tiny",
        build=_convnext_tiny,
        trunk=lambda model: model.features,
        head_name="classifier.2",  # classifier = Sequential(LayerNorm2d, Flatten, Linear)
        relu_before_pool=False,
        first_conv="features.0.0",
        head_norm="classifier.0",
    ),
}

ARCHITECTURES = tuple(ARCHITECTURE_TABLE)


class UnknownArchitecture(ValueError):
    """A name that is not in the table; the message lists the names that are."""


def architecture_get(name: str) -> Architecture:
    try:
        return ARCHITECTURE_TABLE[name]
    except KeyError:
        raise UnknownArchitecture(
            f"Unknown architecture {name!r}; supported: {', '.join(ARCHITECTURES)}."
        ) from None
