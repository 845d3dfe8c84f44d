"""The networks the registry accepts: one table entry per architecture. No Django here.

Every entry is a torchvision classifier whose head is global-average-pool + one Linear layer over
its last feature map, so one export (engine.export) and one closed-form Grad-CAM serve them all.
An entry says how to build the network, which module gives that feature map (the Grad-CAM target
layer is its last module), whether a ReLU sits between that map and the pooling, which Linear is
the head, and how the key names of known checkpoint layouts are rewritten to torchvision's.

torch and torchvision are imported inside the functions: `ARCHITECTURES` (the names) is read by
the admin and the registry services in processes that never load torch.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from torch import nn


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[int], nn.Module]  # num_classes -> untrained network (logits out)
    trunk: Callable[[nn.Module], nn.Module]  # network -> the module whose output A is pooled
    head_name: str  # the attribute holding the Linear classifier ("<head_name>.weight" in a state_dict)
    # True when the network applies ReLU to A before pooling (DenseNet: `features` ends with norm5);
    # False when A is already the pooled activation (ResNet: layer4 ends with a ReLU).
    relu_before_pool: bool
    # (pattern, replacement) applied in order to every checkpoint key, after `module.` prefixes
    # (DataParallel) are stripped.
    key_rewrites: tuple[tuple[re.Pattern, str], ...] = ()

    def head(self, model: nn.Module) -> nn.Linear:
        return getattr(model, self.head_name)

    def target_layer(self, model: nn.Module) -> nn.Module:
        """The layer pytorch_grad_cam.GradCAM is given to reproduce the served maps."""
        trunk = self.trunk(model)
        return list(trunk.children())[-1]


def _densenet121(num_classes: int) -> nn.Module:
    from torchvision.models import densenet121

    return densenet121(weights=None, num_classes=num_classes)


def _resnet50(num_classes: int) -> nn.Module:
    from torchvision.models import resnet50

    return resnet50(weights=None, num_classes=num_classes)


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
        key_rewrites=((re.compile(r"^resnet50\."), ""),),
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
