"""Loading a weights file into its architecture, safely, and turning it into a serving graph. No
Django here.

Weights load with `torch.load(weights_only=True)`, or from a safetensors file (which holds tensors
and nothing else): a pickle that would build arbitrary objects (and so could run code) is refused
before anything in it runs, and a whole pickled model is refused with the two lines that turn it
into a state dict. Keys are matched to the architecture with torch's own `load_state_dict`
semantics (a BatchNorm saved before `num_batches_tracked` existed loads, as torch loads it).
Tensors that could not serve are refused with the layer they are in: a shape that does not fit the
architecture, values that are not finite numbers or of absurd magnitude; and the exported graph
must give finite outputs on a test image before it is accepted.

TorchXRayVision state dicts (they hold `op_threshs`) are brought to lungsite's form on the way in
(engine.xrv_format): outputs chosen and ordered, `op_threshs` turned into thresholds, the one-channel
first convolution kept, and xrv's preprocessing implied.

`weights_prepare` is how the registry checks a weights file and gets what it stores and serves;
`serving_graph_from_weights` is its short form for a registered version's weights. In a process
without torch (a serving worker) both run in a child process (`python -m engine.weights`), so that
the worker never loads torch.
"""

from __future__ import annotations

import io
import json
import logging
import math
import pickle
import subprocess
import sys
import tempfile
import warnings
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.architectures import ARCHITECTURES, UnknownArchitecture, architecture_get
from engine.preprocessing import IMAGENET, TORCHXRAYVISION, preprocessing_complete
from engine.xrv_format import INPUT_SIZES, OP_THRESHS_KEY, XrvFormatError, xrv_plan

if TYPE_CHECKING:  # torch is imported on first use: `manage.py check/migrate` never pay for it
    import torch
    from torch import nn

__all__ = [
    "ARCHITECTURES",
    "SOURCES",
    "ExportFailed",
    "Prepared",
    "WeightsError",
    "load_model",
    "serving_graph_from_weights",
    "weights_prepare",
]

logger = logging.getLogger(__name__)

# The child process (`python -m engine.weights`): besides 0 (results in the --out folder), this exit
# code means the weights were refused, the reason on stderr's last line.
REFUSED_EXIT = 3
_CHILD_TIMEOUT_S = 300
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# No trained layer of these networks comes near this; 1e38 (which a hostile file used to turn every
# prediction into inf and NaN) is far beyond it. A BatchNorm running variance is a squared
# magnitude, so its bound is the square: TorchXRayVision's networks see pixels in [-1024, 1024], and
# the variance of their first layer's outputs runs into the millions.
MAX_ABS_WEIGHT = 1e6
MAX_RUNNING_VAR = MAX_ABS_WEIGHT**2

# Where a weights file comes from: "auto" reads TorchXRayVision's layout when the file holds
# `op_threshs`, torchvision's otherwise.
SOURCES = ("auto", "torchvision", "torchxrayvision")

# What turns a whole pickled model into a state dict, said with its refusal.
WHOLE_MODEL_FIX = (
    'model = torch.load("model.pt", weights_only=False)  # runs code from the file: only one you trust',
    'torch.save(model.state_dict(), "state_dict.pt")',
)
_MODEL_CLASS_PREFIXES = ("torch.nn.modules.", "torchvision.models.", "torchxrayvision.")


class WeightsError(Exception):
    """A weights file that cannot serve: the message says why, in words an admin can act on."""


class ExportFailed(Exception):
    """The child process that checks weights and exports their serving graph crashed or hung:
    nothing is known about the weights; try again."""


def build_model(architecture: str, num_classes: int, channels: int = 3) -> nn.Module:
    """An untrained network of the given architecture with `num_classes` outputs (logits) and
    `channels` input channels."""
    try:
        return architecture_get(architecture).build_for(num_classes, channels)
    except UnknownArchitecture as exc:
        raise WeightsError(str(exc)) from exc


# --------------------------------------------------------------------------------------------
# Reading a file


def _unpickling_detail(exc: Exception) -> str:
    # torch's message starts with advice to retry with weights_only=False; never pass that on.
    # The useful part is the line naming the refused global (e.g. "GLOBAL posix.system").
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line[:200]
    return "it references objects other than tensors."


def _whole_model_classes(data: bytes) -> list[str]:
    """The network classes a torch.save'd whole model names (nothing is unpickled to find them),
    or [] when the file is not one."""
    import torch

    try:
        names = torch.serialization.get_unsafe_globals_in_checkpoint(io.BytesIO(data))
    except Exception:  # noqa: BLE001 - legacy or damaged files: not recognisably a whole model
        return []
    if not any(name.startswith(_MODEL_CLASS_PREFIXES) for name in names):
        return []
    # The network's own class first (e.g. torchvision.models.densenet.DenseNet), then the layers.
    return sorted(names, key=lambda name: (name.startswith("torch.nn."), name))


def is_safetensors(data: bytes, size: int | None = None) -> bool:
    """Whether `data`, a file or its first bytes (the whole file being `size` bytes, when known),
    starts as a safetensors file does: the little-endian length of a JSON header that follows."""
    if len(data) < 10:
        return False
    header = int.from_bytes(data[:8], "little")
    return header >= 2 and data[8:9] == b"{" and (size is None or header <= size - 8)


def _read(data: bytes):
    """The object a weights file holds (tensors, dicts of them), read without running its code."""
    import torch

    if is_safetensors(data, len(data)):
        from safetensors import SafetensorError
        from safetensors.torch import load as safetensors_load

        try:
            return safetensors_load(data)
        except (SafetensorError, ValueError) as exc:
            detail = str(exc).splitlines()[0][:200]
            raise WeightsError(f"Not a readable safetensors file ({detail}).") from exc
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the refusal below says enough.
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        classes = _whole_model_classes(data)
        if classes:
            raise WeightsError(
                f"Refused: the file is a whole pickled model ({classes[0]}), not a state dict; loading "
                "it would run code from the file. Where you trust the file, these two lines turn it "
                "into a state dict that registers:\n" + "\n".join(WHOLE_MODEL_FIX)
            ) from exc
        raise WeightsError(
            "Refused: the file is a pickle that holds more than tensors (loading it could run code). "
            "Save the weights with torch.save(model.state_dict(), path) or safetensors' save_file. "
            f"Detail: {_unpickling_detail(exc)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a weights file"
        raise WeightsError(
            f"Not a PyTorch weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from exc


def _rewrite(key: str, rewrites) -> str:
    for pattern, replacement in rewrites:
        key = pattern.sub(replacement, key)
    return key


def _rewrite_module_path(path: str, rewrites) -> str:
    # state_dict()._metadata is keyed by module path ("features.norm0"); the rewrites are written
    # for parameter keys, so rewrite a parameter key of that module and take its module back.
    if not path:
        return path
    key = _rewrite(f"{path}.weight", rewrites)
    return key[: -len(".weight")] if key.endswith(".weight") else ""


def load_state_dict(data: bytes, architecture: str = "densenet121") -> OrderedDict[str, torch.Tensor]:
    """The tensors of a weights file, whatever the accepted layout, with keys as torchvision names
    them. Accepted: a plain state_dict (torch.save or safetensors); a checkpoint dict holding one
    under `state_dict`, `model` or `model_state_dict`; DataParallel `module.` prefixes; and the
    architecture's own rewrites (engine.architectures: for DenseNet121 the legacy `norm.1`/`conv.1`
    keys and CheXNet's `classifier.0.` head; for ResNet50 TorchXRayVision's `model.`). The
    state_dict's `_metadata` (module versions, which decide whether a missing
    `num_batches_tracked` is accepted) is kept, under the rewritten names."""
    if not data:
        raise WeightsError("The weights file is empty.")
    try:
        rewrites = architecture_get(architecture).key_rewrites
    except UnknownArchitecture as exc:
        raise WeightsError(str(exc)) from exc
    import torch
    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present

    obj = _read(data)
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError("The file holds no state_dict (a mapping of layer names to tensors).")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError("The state_dict holds values that are not tensors.")

    state: OrderedDict[str, torch.Tensor] = OrderedDict((str(k), v) for k, v in obj.items())
    metadata = getattr(obj, "_metadata", None)
    if metadata is not None:
        state._metadata = OrderedDict(metadata)
    while any(key.startswith("module.") for key in state):
        consume_prefix_in_state_dict_if_present(state, "module.")
    rewritten: OrderedDict[str, torch.Tensor] = OrderedDict(
        (_rewrite(key, rewrites), tensor) for key, tensor in state.items()
    )
    if metadata is not None:
        rewritten._metadata = OrderedDict()
        for path, entry in state._metadata.items():
            rewritten._metadata.setdefault(_rewrite_module_path(path, rewrites), entry)
    return rewritten


def _check_values(state: Mapping[str, torch.Tensor]) -> None:
    """Refuses non-finite or absurdly large floating-point values, naming the first such layer."""
    for key, tensor in state.items():
        if not tensor.is_floating_point() or tensor.numel() == 0:
            continue
        values = tensor.detach().float()
        finite = values.isfinite()
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise WeightsError(
                f"Refused: layer {key} holds {bad} value{'s' if bad > 1 else ''} that "
                f"{'are' if bad > 1 else 'is'} not a finite number (NaN or infinity)."
            )
        largest = float(values.abs().max())
        bound = MAX_RUNNING_VAR if key.endswith("running_var") else MAX_ABS_WEIGHT
        if largest > bound:
            raise WeightsError(
                f"Refused: layer {key} holds a value of magnitude {largest:.3g}, beyond the "
                f"{bound:.0e} that any trained layer stays under."
            )


def model_from_state(state: Mapping[str, torch.Tensor], *, architecture: str, num_classes: int) -> nn.Module:
    """The network of `architecture` holding `state` (as load_state_dict returns it), in eval mode;
    its input channels are those of the state's first convolution. Raises WeightsError with the
    reason (naming the layer when one layer is at fault)."""
    try:
        spec = architecture_get(architecture)
    except UnknownArchitecture as exc:
        raise WeightsError(str(exc)) from exc
    head_key = f"{spec.head_name}.weight"
    head = state.get(head_key)
    if head is None or head.ndim != 2:
        raise WeightsError(f"The weights have no {architecture} classifier layer ({head_key!r}).")
    if head.shape[0] != num_classes:
        raise WeightsError(
            f"The weights have {head.shape[0]} outputs but {num_classes} class names were given."
        )
    channels = spec.channels_of(state) or 3
    model = spec.build_for(num_classes, channels)
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key in state and state[key].shape != tensor.shape:
            raise WeightsError(
                f"The weights do not fit {architecture}: layer {key} has shape "
                f"{tuple(state[key].shape)} where {architecture} has {tuple(tensor.shape)}."
            )
    _check_values(state)
    # torch decides which keys may be absent (a BatchNorm saved before num_batches_tracked
    # existed); strict=False so that both lists come back instead of an exception to parse.
    result = model.load_state_dict(state, strict=False)
    missing, unexpected = result.missing_keys, result.unexpected_keys
    if missing or unexpected:
        raise WeightsError(
            f"The weights do not fit {architecture}: {len(missing)} missing keys "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})."
        )
    return model.eval()


def load_model(data: bytes, *, architecture: str, num_classes: int) -> nn.Module:
    """The network with the file's weights, in eval mode. Raises WeightsError with the reason
    (naming the layer when one layer is at fault)."""
    state = load_state_dict(data, architecture)
    return model_from_state(state, architecture=architecture, num_classes=num_classes)


def save_state_dict(model: nn.Module) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


# --------------------------------------------------------------------------------------------
# The check on a test image


def probe_input(preprocessing: dict | int) -> np.ndarray:
    """A deterministic synthetic X-ray-like input, (1, C, S, S) float32 preprocessed as `preprocessing`
    says (an int: the ImageNet profile at that size): a bright frame with two darker lung fields
    and fixed-seed noise. Used to check that a graph gives finite outputs (a real image is used by
    the tests; none ships with the code)."""
    from engine.pipeline import preprocess

    spec = {**IMAGENET, "input_size": preprocessing} if isinstance(preprocessing, int) else preprocessing
    spec = preprocessing_complete(spec)
    side = int(spec["input_size"])
    y, x = np.mgrid[0:side, 0:side] / max(side - 1, 1)
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)
    )
    noise = np.random.default_rng(0).normal(0.0, 0.05, (side, side))
    gray = np.clip(0.8 - 0.6 * lungs + noise, 0.0, 1.0).astype(np.float32)
    return preprocess(gray, spec)


def check_graph_outputs(graph: bytes, preprocessing: dict | int) -> None:
    """Runs the graph in ONNX Runtime (as the workers will) on `probe_input` and refuses it when any
    output is not a finite number: such weights would fail every prediction. `preprocessing` is the
    version's (an int: the input size of an ImageNet-profile version)."""
    from engine.serving import ServingRuntime

    spec = {**IMAGENET, "input_size": preprocessing} if isinstance(preprocessing, int) else preprocessing
    spec = preprocessing_complete(spec)
    runtime = ServingRuntime.from_graph(graph, int(spec["input_size"]), threads=1)
    if runtime.channels != spec["channels"]:
        # A version whose stored preprocessing disagrees with its graph (the graph decides).
        spec = {**spec, "channels": runtime.channels, "mean": spec["mean"][:1], "std": spec["std"][:1]}
    logits, cams = runtime.run(probe_input(spec))
    for name, values in (("scores", logits), ("heatmaps", cams)):
        if not np.isfinite(values).all():
            raise WeightsError(
                f"Refused: the weights give {name} that are not finite numbers (NaN or infinity) on a "
                "test image; check the layers' values (e.g. negative BatchNorm running variances)."
            )


# --------------------------------------------------------------------------------------------
# From a file to what the registry stores


@dataclass
class Prepared:
    """What registering a weights file yields."""

    graph: bytes  # the ONNX serving graph (engine.export)
    weights: bytes  # what to store: the file itself, or its converted form (TorchXRayVision)
    class_names: list[str]  # the served outputs' names, in order
    thresholds: dict[str, float]  # from the file (TorchXRayVision's op_threshs); may be empty
    preprocessing: dict  # complete (engine.preprocessing)
    source: dict = field(default_factory=dict)  # where the weights came from and what was done
    report: list[str] = field(default_factory=list)  # the same, in sentences for the admin


def _prepare(
    data: bytes,
    *,
    architecture: str,
    class_names: list[str] | None,
    preprocessing: dict | None,
    source: str,
    extra_outputs: str,
    findings: list[str],
) -> Prepared:
    """weights_prepare's work, in a process with torch (this one or the child)."""
    import torch

    from engine.export import onnx_graph

    if source not in SOURCES:
        raise WeightsError(f"Unknown weights source {source!r}; known: {', '.join(SOURCES)}.")
    state = load_state_dict(data, architecture)
    if source == "auto":
        source = "torchxrayvision" if OP_THRESHS_KEY in state else "torchvision"
    spec = architecture_get(architecture)
    thresholds: dict[str, float] = {}
    report: list[str] = []
    converted = False
    origin: dict = {"format": source}
    if source == "torchxrayvision":
        if architecture not in INPUT_SIZES:
            raise WeightsError(
                f"TorchXRayVision publishes {' and '.join(INPUT_SIZES)} weights, not {architecture}: "
                "choose the architecture of the file."
            )
        head = state.get(f"{spec.head_name}.weight")
        if head is None or head.ndim != 2:
            raise WeightsError(
                f"The weights have no {architecture} classifier layer ({spec.head_name}.weight)."
            )
        points = state.pop(OP_THRESHS_KEY, None)
        op_threshs = None if points is None else [float(v) for v in points.flatten().tolist()]
        try:
            plan = xrv_plan(
                outputs=int(head.shape[0]),
                op_threshs=op_threshs,
                labels=class_names,
                findings=findings,
                extra_outputs=extra_outputs,
            )
        except XrvFormatError as exc:
            raise WeightsError(str(exc)) from exc
        order = torch.tensor(plan.order)
        for name in (f"{spec.head_name}.weight", f"{spec.head_name}.bias"):
            if name in state:
                state[name] = state[name].index_select(0, order).clone()
        class_names, thresholds = plan.class_names, plan.thresholds
        report = plan.report()
        converted = True
        origin.update(
            outputs=int(head.shape[0]),
            # JSON has no NaN (Postgres' jsonb refuses it): an untrained output's point is null.
            op_threshs=None if op_threshs is None else [v if math.isfinite(v) else None for v in op_threshs],
            served_outputs=plan.order,
            dropped=plan.dropped,
            extra_outputs=extra_outputs,
        )
        if not preprocessing:
            preprocessing = {**TORCHXRAYVISION, "input_size": INPUT_SIZES[architecture]}
            report.append(
                f"Preprocessing: TorchXRayVision's ([-1024, 1024], centre crop, "
                f"{preprocessing['input_size']} px, one channel)."
            )
    elif class_names is None:
        if not findings:
            raise WeightsError("Class names are required for these weights (ordered as the model's outputs).")
        class_names = list(findings)
    preprocessing = preprocessing_complete(preprocessing or IMAGENET)
    channels = spec.channels_of(state)
    if channels is not None and channels != preprocessing["channels"]:
        raise WeightsError(
            f"The weights' first layer ({spec.first_conv}) takes {channels} input "
            f"channel{'s' if channels > 1 else ''} but the preprocessing gives {preprocessing['channels']}"
            + (
                " (TorchXRayVision weights? register them with source torchxrayvision)."
                if channels == 1
                else "."
            )
        )
    model = model_from_state(state, architecture=architecture, num_classes=len(class_names))
    graph = onnx_graph(model, architecture, int(preprocessing["input_size"]))
    if converted:
        buffer = io.BytesIO()
        torch.save(state, buffer)
        data = buffer.getvalue()
    return Prepared(
        graph=graph,
        weights=data,
        class_names=list(class_names),
        thresholds=thresholds,
        preprocessing=preprocessing,
        source=origin,
        report=report,
    )


def weights_prepare(
    data: bytes,
    *,
    architecture: str,
    class_names: list[str] | None,
    preprocessing: dict | None = None,
    source: str = "auto",
    extra_outputs: str = "keep",
    findings: list[str] | tuple[str, ...] = (),
    isolate: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> Prepared:
    """Reads a weights file as `source` says (module docstring), loads it into `architecture`
    (WeightsError with the reason when it does not fit), exports the serving graph (engine.export,
    a few seconds), and checks that the graph gives finite outputs on a test image.

    `class_names`: the outputs' names in order (None: `findings` for torchvision's layout, xrv's 18
    labels for TorchXRayVision's);
    `preprocessing`: complete (engine.preprocessing.preprocessing_check), or None for the source's
    own (ImageNet's; TorchXRayVision's); `extra_outputs` ("keep"/"drop") and `findings` (lungsite's
    findings, which come first): how TorchXRayVision's outputs are chosen (engine.xrv_format).

    Loading and exporting need torch, which takes about 500 MB of resident memory here (the pinned
    CUDA build) and keeps it until the process exits. A process that has imported torch already (a
    management command, the tests, the benchmark) runs them itself. One that has not, such as a
    serving worker where a model-admin registers or activates a version through the admin or the
    API, runs them in a child process (`python -m engine.weights`, the weights on stdin, the
    results in a temporary folder), and stays torch-free. The results are the same either way.
    `isolate` forces one way (tests). `progress` is told, in words, which step starts. Raises
    ExportFailed when the child crashes or runs past 300 s."""
    say = progress or (lambda message: None)
    if isolate is None:
        isolate = "torch" not in sys.modules
    request = {
        "architecture": architecture,
        "class_names": None if class_names is None else list(class_names),
        "preprocessing": preprocessing,
        "source": source,
        "extra_outputs": extra_outputs,
        "findings": list(findings),
    }
    say(f"Loading the weights into {architecture} and exporting the serving graph (torch.onnx.export)...")
    prepared = _prepare_in_child(data, request) if isolate else _prepare(data, **request)
    for line in prepared.report:
        say(line)
    say("Checking the serving graph's outputs on a test image...")
    check_graph_outputs(prepared.graph, prepared.preprocessing)
    return prepared


def serving_graph_from_weights(
    data: bytes,
    *,
    architecture: str,
    num_classes: int,
    input_size: int,
    preprocessing: dict | None = None,
    isolate: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> bytes:
    """The serving graph of a registered version's weights (stored in lungsite's form: the
    torchvision layout), as weights_prepare exports and checks it; `num_classes` outputs,
    `preprocessing` the version's (default: ImageNet's at `input_size`)."""
    spec = preprocessing_complete({**(preprocessing or {}), "input_size": input_size})
    return weights_prepare(
        data,
        architecture=architecture,
        class_names=[f"output {i}" for i in range(num_classes)],
        preprocessing=spec,
        source="torchvision",
        isolate=isolate,
        progress=progress,
    ).graph


def _prepare_in_child(data: bytes, request: dict) -> Prepared:
    with tempfile.TemporaryDirectory(prefix="lungsite-weights-") as folder:
        command = [
            sys.executable,
            "-m",
            "engine.weights",
            f"--request={json.dumps(request)}",
            f"--out={folder}",
        ]
        try:
            done = subprocess.run(
                command,
                input=data,
                capture_output=True,
                cwd=_PROJECT_ROOT,
                timeout=_CHILD_TIMEOUT_S,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise ExportFailed(f"The weights checker did not finish ({type(exc).__name__}).") from exc
        lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
        if done.returncode == REFUSED_EXIT:
            raise WeightsError(
                json.loads(lines[-1]) if lines and lines[-1].startswith('"') else "The weights do not load."
            )
        out = Path(folder)
        try:
            if done.returncode != 0:
                raise OSError
            fields = json.loads((out / "prepared.json").read_text())
            graph = (out / "graph.onnx").read_bytes()
            weights = (out / "weights").read_bytes() if fields.pop("converted") else data
        except (OSError, ValueError, KeyError) as exc:
            logger.error("the weights checker exited with %s: %s", done.returncode, "\n".join(lines[-20:]))
            raise ExportFailed(f"The weights checker failed (exit status {done.returncode}).") from exc
    return Prepared(graph=graph, weights=weights, **fields)


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.weights --request=JSON --out=DIR`: the weights file on stdin (the request:
    weights_prepare's arguments); writes DIR/graph.onnx, DIR/prepared.json and, when the weights
    were converted, DIR/weights (exit 0), or the reason, as a JSON string, on stderr's last line
    with REFUSED_EXIT when the weights are refused."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.weights", description=main.__doc__)
    parser.add_argument("--request", required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    data = sys.stdin.buffer.read()
    try:
        prepared = _prepare(data, **json.loads(args.request))
    except WeightsError as exc:
        print(json.dumps(str(exc)), file=sys.stderr)
        return REFUSED_EXIT
    out = Path(args.out)
    converted = prepared.weights is not data
    (out / "graph.onnx").write_bytes(prepared.graph)
    if converted:
        (out / "weights").write_bytes(prepared.weights)
    fields = {key: value for key, value in asdict(prepared).items() if key not in ("graph", "weights")}
    (out / "prepared.json").write_text(json.dumps({**fields, "converted": converted}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
