"""Building the network and loading a weights file into it, safely. No Django here.

Weights load with `torch.load(weights_only=True)`: a pickle that would build arbitrary objects
(and so could run code) is refused before anything in it runs.

`serving_graph_from_weights` is how the registry checks a weights file and gets its serving graph:
in a process without torch (a serving worker) it does both in a child process, so that the worker
never loads torch.
"""

from __future__ import annotations

import io
import logging
import pickle
import re
import subprocess
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported on first use: `manage.py check/migrate` never pay for it
    import torch
    from torch import nn

ARCHITECTURES = ("densenet121",)

logger = logging.getLogger(__name__)

# The child process (`python -m inference.export`): its exit codes besides 0 (graph on stdout).
REFUSED_EXIT = 3  # the weights do not load: the reason on stderr
NO_GRAPH_EXIT = 4  # they load, but the graph writer cannot describe the network: served by torch
_CHILD_TIMEOUT_S = 300
_PROJECT_ROOT = Path(__file__).resolve().parent.parent

# Old CheXNet checkpoints (torchvision < 0.3) name DenseNet layers "norm.1" where torchvision now
# says "norm1"; torchvision's own loader rewrites them with the same pattern.
_LEGACY_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
    r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$"
)


class WeightsError(Exception):
    """A weights file that cannot serve: the message says why, in words an admin can act on."""


class GraphWriterFailed(Exception):
    """The child process that checks weights and writes their serving graph crashed or hung: nothing
    is known about the weights; try again."""


def build_model(architecture: str, num_classes: int) -> nn.Module:
    """An untrained network of the given architecture with `num_classes` outputs (logits)."""
    if architecture not in ARCHITECTURES:
        raise WeightsError(f"Unknown architecture {architecture!r}; supported: {', '.join(ARCHITECTURES)}.")
    from torchvision.models import densenet121

    return densenet121(weights=None, num_classes=num_classes)


def _unpickling_detail(exc: Exception) -> str:
    # torch's message starts with advice to retry with weights_only=False; never pass that on.
    # The useful part is the line naming the refused global (e.g. "GLOBAL posix.system").
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "GLOBAL" in line or "Unsupported" in line:
            return line[:200]
    return "it references objects other than tensors."


def load_state_dict(data: bytes) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, whatever the accepted layout, with keys as torchvision names
    them. Accepted: a plain state_dict; a checkpoint dict holding one under `state_dict` or
    `model`; DataParallel `module.` prefixes; legacy `norm.1`/`conv.1` keys; a
    `classifier.0.` head (CheXNet's Sequential(Linear, Sigmoid))."""
    if not data:
        raise WeightsError("The weights file is empty.")
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
        if key.startswith("densenet121."):  # CheXNet reproductions wrap torchvision's model
            key = key[len("densenet121.") :]
        key = _LEGACY_KEY.sub(r"\1\2", key)
        if key.startswith("classifier.0."):
            key = "classifier." + key[len("classifier.0.") :]
        state[key] = tensor
    return state


def load_model(data: bytes, *, architecture: str, num_classes: int) -> nn.Module:
    """The network with the file's weights, in eval mode. Raises WeightsError with the reason."""
    state = load_state_dict(data)
    head = state.get("classifier.weight")
    if head is None or head.ndim != 2:
        raise WeightsError("The weights have no DenseNet classifier layer ('classifier.weight').")
    if head.shape[0] != num_classes:
        raise WeightsError(
            f"The weights have {head.shape[0]} outputs but {num_classes} class names were given."
        )
    model = build_model(architecture, num_classes)
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        missing = ", ".join(result.missing_keys[:3])
        unexpected = ", ".join(result.unexpected_keys[:3])
        raise WeightsError(
            f"The weights do not fit {architecture}: {len(result.missing_keys)} missing keys "
            f"({missing}), {len(result.unexpected_keys)} unexpected keys ({unexpected})."
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsError(f"The weights do not fit {architecture}: {str(exc)[:300]}") from exc
    return model.eval()


def save_state_dict(model: nn.Module) -> bytes:
    import torch

    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.getvalue()


def serving_graph_from_weights(
    data: bytes, *, architecture: str, num_classes: int, input_size: int, isolate: bool | None = None
) -> bytes | None:
    """Loads the weights into `architecture` with `num_classes` outputs (WeightsError with the reason
    when they do not fit) and returns the serving graph written from them (inference.export), or
    None for a network the graph writer cannot describe, which is then served by torch.

    Both steps need torch, which takes about 500 MB of resident memory here (the pinned CUDA build)
    and keeps it until the process exits. A process that has imported torch already (a management
    command, the tests, the benchmark) runs them itself. One that has not, such as a serving worker
    where a model-admin registers or activates a version through the admin or the API, runs them in
    a child process (`python -m inference.export`, the weights on stdin, the graph on stdout), and
    stays torch-free. The graph's bytes are the same either way. `isolate` forces one way (tests).
    Raises GraphWriterFailed when the child crashes or runs past 300 s."""
    if isolate is None:
        isolate = "torch" not in sys.modules
    if not isolate:
        from inference.export import serving_graph

        model = load_model(data, architecture=architecture, num_classes=num_classes)
        return serving_graph(model, input_size)
    command = [
        sys.executable,
        "-m",
        "inference.export",
        f"--architecture={architecture}",
        f"--num-classes={num_classes}",
        f"--input-size={input_size}",
    ]
    try:
        done = subprocess.run(
            command, input=data, capture_output=True, cwd=_PROJECT_ROOT, timeout=_CHILD_TIMEOUT_S, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise GraphWriterFailed(f"The weights checker did not finish ({type(exc).__name__}).") from exc
    lines = done.stderr.decode("utf-8", "replace").strip().splitlines()
    last = lines[-1].strip() if lines else ""
    if done.returncode == 0:
        return done.stdout
    if done.returncode == REFUSED_EXIT:
        raise WeightsError(last or "The weights do not load.")
    if done.returncode == NO_GRAPH_EXIT:
        logger.warning("no ONNX serving graph, it will be served by torch: %s", last)
        return None
    logger.error("the weights checker exited with %s: %s", done.returncode, "\n".join(lines[-20:]))
    raise GraphWriterFailed(f"The weights checker failed (exit status {done.returncode}).")
