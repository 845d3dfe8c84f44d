"""TorchXRayVision's weights as lungsite serves them: which outputs, under which names, with which
thresholds and preprocessing. No Django and no torch here (engine.weights applies the plan to the
tensors).

`xrv.models.DenseNet` and `xrv.models.ResNet` are torchvision's DenseNet121 and ResNet50 with a
one-channel first convolution and 18 outputs in the order of `xrv.datasets.default_pathologies`;
weights trained on one dataset leave the labels that dataset lacks empty ("") and their
`op_threshs` entry NaN. Their state dicts hold `op_threshs`, the per-output operating points that
xrv's forward uses to rescale its outputs so that each threshold maps to 0.5
(`xrv.models.op_norm`).

How lungsite maps them (docs/models.md, "TorchXRayVision"):
- probabilities are the network's sigmoid outputs, sigmoid(logit): what xrv returns with
  `apply_sigmoid=True` and no `op_threshs`;
- each output's `op_threshs` entry becomes its threshold, so "positive" (probability >= threshold)
  is exactly xrv's op_norm output >= 0.5, and op_norm(probability, op_threshs) is xrv's own
  output;
- an output with an empty label or a NaN operating point was not trained: it is dropped;
- the outputs named like lungsite's findings come first, in lungsite's order; the other labels
  (Hernia, Lung Lesion, Fracture, Lung Opacity, Enlarged Cardiomediastinum) are kept after them
  or dropped, as the registering admin chooses.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

# xrv.datasets.default_pathologies (torchxrayvision 1.5.7): the order of every xrv model's outputs.
LABELS = (
    "Atelectasis",
    "Consolidation",
    "Infiltration",
    "Pneumothorax",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Effusion",
    "Pneumonia",
    "Pleural_Thickening",
    "Cardiomegaly",
    "Nodule",
    "Mass",
    "Hernia",
    "Lung Lesion",
    "Fracture",
    "Lung Opacity",
    "Enlarged Cardiomediastinum",
)

# The networks xrv publishes weights for, and the input size each was trained at
# (model_urls[...]["input_resolution"]).
INPUT_SIZES = {"densenet121": 224, "resnet50": 512}

EXTRA_OUTPUTS = ("keep", "drop")
OP_THRESHS_KEY = "op_threshs"


class XrvFormatError(ValueError):
    """TorchXRayVision weights that cannot be mapped; the message says why."""


@dataclass
class XrvPlan:
    order: list[int]  # the file's output indices, in the order lungsite serves them
    class_names: list[str]  # their names, same order
    thresholds: dict[str, float]  # name -> operating point, where the file has one
    dropped: dict[str, str] = field(default_factory=dict)  # "label (output i)" -> why

    def report(self) -> list[str]:
        findings = ", ".join(self.class_names)
        lines = [f"TorchXRayVision weights: serving {len(self.order)} outputs ({findings})."]
        if self.thresholds:
            lines.append(f"Thresholds from op_threshs for {len(self.thresholds)} of them.")
        if self.dropped:
            lines.append(
                "Dropped: " + "; ".join(f"{label}: {why}" for label, why in self.dropped.items()) + "."
            )
        return lines


def xrv_plan(
    *,
    outputs: int,
    op_threshs: list[float] | None,
    labels: list[str] | None,
    findings: list[str],
    extra_outputs: str = "keep",
) -> XrvPlan:
    """Which of a TorchXRayVision file's `outputs` lungsite serves and how (module docstring).
    `labels`: the name of every output in the file's order (default: xrv's 18); `findings`:
    lungsite's findings, in the order they should come first. Raises XrvFormatError."""
    if extra_outputs not in EXTRA_OUTPUTS:
        raise XrvFormatError(f"extra outputs must be one of: {', '.join(EXTRA_OUTPUTS)}.")
    if labels is None:
        if outputs != len(LABELS):
            raise XrvFormatError(
                f"The TorchXRayVision weights have {outputs} outputs, not xrv's {len(LABELS)}: give "
                "the label of every output, in order (the model's `targets`)."
            )
        labels = list(LABELS)
    if len(labels) != outputs:
        raise XrvFormatError(f"The weights have {outputs} outputs but {len(labels)} labels were given.")
    if op_threshs is not None and len(op_threshs) != outputs:
        raise XrvFormatError(f"op_threshs has {len(op_threshs)} values for {outputs} outputs.")
    trained: dict[str, int] = {}
    dropped: dict[str, str] = {}
    for index, label in enumerate(labels):
        label = (label or "").strip()
        point = None if op_threshs is None else op_threshs[index]
        if not label:
            dropped[f"output {index}"] = "no label (not trained by these weights)"
        elif point is not None and not math.isfinite(point):
            dropped[f"{label} (output {index})"] = "no operating point (NaN: not trained by these weights)"
        elif label in trained:
            raise XrvFormatError(f"The label {label!r} names two outputs.")
        else:
            trained[label] = index
    served = [name for name in findings if name in trained]
    extras = [name for name in trained if name not in findings]
    if extra_outputs == "keep":
        served += extras
    else:
        for name in extras:
            dropped[f"{name} (output {trained[name]})"] = "not a lungsite finding (dropped as asked)"
    if not served:
        raise XrvFormatError("None of the weights' outputs is left to serve.")
    order = [trained[name] for name in served]
    thresholds = {}
    if op_threshs is not None:
        thresholds = {name: float(op_threshs[trained[name]]) for name in served}
        outside = sorted(name for name, value in thresholds.items() if not 0.0 <= value <= 1.0)
        if outside:
            raise XrvFormatError(f"op_threshs outside [0, 1] for: {', '.join(outside)}.")
    return XrvPlan(order=order, class_names=served, thresholds=thresholds, dropped=dropped)
