"""Loading a weights file into its architecture, safely, and turning it into a serving graph. No
Django here.

Weights load with `torch.load(weights_only=True)`: a pickle that would build arbitrary objects
(and so could run code) is refused before anything in it runs. Tensors that could not serve are
refused with the layer they are in: a shape that does not fit the architecture, values that are
not finite numbers or of absurd magnitude; and the exported graph must give finite outputs on a
test image before it is accepted.

`serving_graph_from_weights` is how the registry checks a weights file and gets its serving graph:
in a process without torch (a serving worker) it loads and exports in a child process
(`python -m engine.weights`), so that the worker never loads torch.
"""

from __future__ import annotations

import io
import logging
import pickle
import subprocess
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from engine.architectures import ARCHITECTURES, UnknownArchitecture, architecture_get

if TYPE_CHECKING:  # torch is imported on first use: `manage.py check/migrate` never pay for it
    import torch
    from torch import nn

__all__ = ["ARCHITECTURES", "ExportFailed", "WeightsError", "load_model", "serving_graph_from_weights"]

logger = logging.getLogger(__name__)

# The child process (`python -m engine.weights`): besides 0 (graph on stdout), this exit code
# means the weights were refused, the reason on stderr's last line.
REFUSED_EXIT = 3
_CHILD_TIMEOUT_S = 300
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# No trained layer of these networks comes near this; 1e38 (which a hostile file used to turn every
# prediction into inf and NaN) is far beyond it. BatchNorm's running variances stay well below it too.
MAX_ABS_WEIGHT = 1e6


class WeightsError(Exception):
    """A weights file that cannot serve: the message says why, in words an admin can act on."""


class ExportFailed(Exception):
    """The child process that checks weights and exports their serving graph crashed or hung:
    nothing is known about the weights; try again."""


def build_model(architecture: str, num_classes: int) -> nn.Module:
    """An untrained network of the given architecture with `num_classes` outputs (logits)."""
    try:
        return architecture_get(architecture).build(num_classes)
    except UnknownArchitecture as exc:
        raise WeightsError(str(exc)) from exc


def _unpickling_detail(exc: Exception) -> str:
    # torch's message starts with advice to retry with weights_only=False; never pass that on.
    # The useful part is the line naming the refused global (e.g. "GLOBAL posix.system").
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line[:200]
    return "it references objects other than tensors."


def load_state_dict(data: bytes, architecture: str = "densenet121") -> dict[str, torch.Tensor]:
    """The tensors of a weights file, whatever the accepted layout, with keys as torchvision names
    them. Accepted: a plain state_dict; a checkpoint dict holding one under `state_dict`, `model`
    or `model_state_dict`; DataParallel `module.` prefixes; and the architecture's own rewrites
    (engine.architectures: for DenseNet121 the legacy `norm.1`/`conv.1` keys and CheXNet's
    `classifier.0.` head)."""
    if not data:
        raise WeightsError("The weights file is empty.")
    try:
        rewrites = architecture_get(architecture).key_rewrites
    except UnknownArchitecture as exc:
        raise WeightsError(str(exc)) from exc
    import torch

    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the refusal below says enough.
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise WeightsError(
            "Refused: the file is a pickle that holds more than tensors (loading it could run code). "
            "Save the weights with torch.save(model.state_dict(), path). "
            f"Detail: {_unpickling_detail(exc)}"
        ) from exc
    except Exception as exc:  # noqa: BLE001 - any failure here means "not a weights file"
        raise WeightsError(
            f"Not a PyTorch weights file ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})."
        ) from exc

    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model", "model_state_dict"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not obj:
        raise WeightsError("The file holds no state_dict (a mapping of layer names to tensors).")
    if not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError("The state_dict holds values that are not tensors.")

    state = {}
    for key, tensor in obj.items():
        key = str(key)
        while key.startswith("module."):
            key = key[len("module.") :]
        for pattern, replacement in rewrites:
            key = pattern.sub(replacement, key)
        state[key] = tensor
    return state


def _check_values(state: dict[str, torch.Tensor]) -> None:
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
        if largest > MAX_ABS_WEIGHT:
            raise WeightsError(
                f"Refused: layer {key} holds a value of magnitude {largest:.3g}, beyond the "
                f"{MAX_ABS_WEIGHT:.0e} that any trained layer stays under."
            )


def load_model(data: bytes, *, architecture: str, num_classes: int) -> nn.Module:
    """The network with the file's weights, in eval mode. Raises WeightsError with the reason
    (naming the layer when one layer is at fault)."""
    state = load_state_dict(data, architecture)
    spec = architecture_get(architecture)
    head_key = f"{spec.head_name}.weight"
    head = state.get(head_key)
    if head is None or head.ndim != 2:
        raise WeightsError(f"The weights have no {architecture} classifier layer ({head_key!r}).")
    if head.shape[0] != num_classes:
        raise WeightsError(
            f"The weights have {head.shape[0]} outputs but {num_classes} class names were given."
        )
    model = spec.build(num_classes)
    expected = model.state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise WeightsError(
            f"The weights do not fit {architecture}: {len(missing)} missing keys "
            f"({', '.join(missing[:3])}), {len(unexpected)} unexpected keys ({', '.join(unexpected[:3])})."
        )
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise WeightsError(
                f"The weights do not fit {architecture}: layer {key} has shape "
                f"{tuple(state[key].shape)} where {architecture} has {tuple(tensor.shape)}."
            )
    _check_values(state)
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_state_dict(model: nn.Module) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def probe_input(input_size: int, channels: int = 3) -> np.ndarray:
    """A deterministic synthetic X-ray-like input, (1, C, S, S) float32 normalised as the default
    preprocessing does: a bright frame with two darker lung fields and fixed-seed noise. Used to
    check that a graph gives finite outputs (a real image is used by the tests; none ships with
    the code)."""
    y, x = np.mgrid[0:input_size, 0:input_size] / max(input_size - 1, 1)
    lungs = np.exp(-(((x - 0.3) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)) + np.exp(
        -(((x - 0.7) / 0.15) ** 2 + ((y - 0.5) / 0.3) ** 2)
    )
    noise = np.random.default_rng(0).normal(0.0, 0.05, (input_size, input_size))
    gray = np.clip(0.8 - 0.6 * lungs + noise, 0.0, 1.0)
    mean = np.array([0.485, 0.456, 0.406][:channels]).reshape(channels, 1, 1)
    std = np.array([0.229, 0.224, 0.225][:channels]).reshape(channels, 1, 1)
    return ((gray[None] - mean) / std)[None].astype(np.float32)


def check_graph_outputs(graph: bytes, input_size: int) -> None:
    """Runs the graph in ONNX Runtime (as the workers will) on `probe_input` and refuses it when any
    output is not a finite number: such weights would fail every prediction."""
    from engine.serving import ServingRuntime

    logits, cams, _ = ServingRuntime.from_graph(graph, input_size, threads=1).run(probe_input(input_size))
    for name, values in (("scores", logits), ("heatmaps", cams)):
        if not np.isfinite(values).all():
            raise WeightsError(
                f"Refused: the weights give {name} that are not finite numbers (NaN or infinity) on a "
                "test image; check the layers' values (e.g. negative BatchNorm running variances)."
            )


def serving_graph_from_weights(
    data: bytes,
    *,
    architecture: str,
    num_classes: int,
    input_size: int,
    isolate: bool | None = None,
    progress: Callable[[str], None] | None = None,
) -> bytes:
    """Loads the weights into `architecture` with `num_classes` outputs (WeightsError with the reason
    when they do not fit), exports the serving graph (engine.export, a few seconds), and checks
    that it gives finite outputs on a test image. Returns the graph's bytes.

    Loading and exporting need torch, which takes about 500 MB of resident memory here (the pinned
    CUDA build) and keeps it until the process exits. A process that has imported torch already (a
    management command, the tests, the benchmark) runs them itself. One that has not, such as a
    serving worker where a model-admin registers or activates a version through the admin or the
    API, runs them in a child process (`python -m engine.weights`, the weights on stdin, the
    graph on stdout), and stays torch-free. The graph's bytes are the same either way. `isolate`
    forces one way (tests). `progress` is told, in words, which step starts. Raises ExportFailed
    when the child crashes or runs past 300 s."""
    say = progress or (lambda message: None)
    if isolate is None:
        isolate = "torch" not in sys.modules
    say(f"Loading the weights into {architecture} and exporting the serving graph (torch.onnx.export)...")
    if isolate:
        graph = _graph_in_child(
            data, architecture=architecture, num_classes=num_classes, input_size=input_size
        )
    else:
        graph = _graph(data, architecture=architecture, num_classes=num_classes, input_size=input_size)
    say("Checking the serving graph's outputs on a test image...")
    check_graph_outputs(graph, input_size)
    return graph


def _graph(data: bytes, *, architecture: str, num_classes: int, input_size: int) -> bytes:
    from engine.export import onnx_graph

    model = load_model(data, architecture=architecture, num_classes=num_classes)
    return onnx_graph(model, architecture, input_size)


def _graph_in_child(data: bytes, *, architecture: str, num_classes: int, input_size: int) -> bytes:
    command = [
        sys.executable,
        "-m",
        "engine.weights",
        f"--architecture={architecture}",
        f"--num-classes={num_classes}",
        f"--input-size={input_size}",
    ]
    try:
        done = subprocess.run(
            command, input=data, capture_output=True, cwd=_PROJECT_ROOT, timeout=_CHILD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExportFailed(f"The weights checker did not finish ({type(exc).__name__}).") from exc
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    if done.returncode == 0:
        return done.stdout
    if done.returncode == REFUSED_EXIT:
        raise WeightsError(lines[-1].strip() if lines else "The weights do not load.")
    logger.error("the weights checker exited with %s: %s", done.returncode, "\n".join(lines[-20:]))
    raise ExportFailed(f"The weights checker failed (exit status {done.returncode}).")


def main(argv: list[str] | None = None) -> int:
    """`python -m engine.weights --architecture=A --num-classes=K --input-size=S`: the weights
    file on stdin; the serving graph on stdout (exit 0), or the reason on stderr's last line with
    REFUSED_EXIT when the weights are refused."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m engine.weights", description=main.__doc__)
    parser.add_argument("--architecture", required=True)
    parser.add_argument("--num-classes", type=int, required=True)
    parser.add_argument("--input-size", type=int, required=True)
    args = parser.parse_args(argv)
    try:
        graph = _graph(
            sys.stdin.buffer.read(),
            architecture=args.architecture,
            num_classes=args.num_classes,
            input_size=args.input_size,
        )
    except WeightsError as exc:
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return REFUSED_EXIT
    sys.stdout.buffer.write(graph)
    sys.stdout.buffer.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
