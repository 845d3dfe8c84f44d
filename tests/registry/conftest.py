"""Weights files for the registry tests: built once per session from the starter's bytes."""

import functools
import io
import zlib

import pytest
import torch

from tests.conftest import starter_weights_bytes


def _state() -> dict:
    return torch.load(io.BytesIO(starter_weights_bytes()), map_location="cpu", weights_only=True)


def _save(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@functools.cache
def variant_weights_bytes(seed: int) -> bytes:
    """13-output weights that differ from the starter (and from each other) in the classifier only."""
    state = _state()
    generator = torch.Generator().manual_seed(seed)
    state["classifier.bias"] = torch.randn(state["classifier.bias"].shape, generator=generator)
    return _save(state)


@functools.cache
def dataparallel_checkpoint_bytes() -> bytes:
    """What `torch.save({"state_dict": nn.DataParallel(model).state_dict()})` writes."""
    return _save({"state_dict": {"module." + k: v for k, v in _state().items()}, "epoch": 7})


@functools.cache
def wrong_outputs_bytes(outputs: int = 5) -> bytes:
    state = _state()
    state["classifier.weight"] = state["classifier.weight"][:outputs].clone()
    state["classifier.bias"] = state["classifier.bias"][:outputs].clone()
    return _save(state)


class _Hostile:
    """Unpickling this would call open(marker, "w"): i.e. run code and leave a file behind."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def hostile_pickle_bytes(marker) -> bytes:
    return _save({"state_dict": {"classifier.weight": _Hostile(str(marker))}})


def stored_objects(settings) -> list[str]:
    """Every file in the `models` storage folder of this test."""
    from pathlib import Path

    root = Path(settings.STORAGES["models"]["OPTIONS"]["location"])
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def register():
    """register(name, data=None, **kw) -> a registered (not active) 13-class version."""
    from registry.models import DEFAULT_CLASS_NAMES
    from registry.services import model_version_register

    def _register(name: str, data: bytes | None = None, **kwargs):
        kwargs.setdefault("class_names", DEFAULT_CLASS_NAMES)
        return model_version_register(
            data=data or variant_weights_bytes(zlib.crc32(name.encode())), version_name=name, **kwargs
        )

    return _register


def corrupt_stored_weights(version, *, graph: bool = True) -> None:
    """Overwrites a few bytes of the version's stored weights and, unless `graph=False`, of its
    serving graph (what workers load)."""
    from registry.storage import weights_storage

    paths = [version.storage_path]
    if graph and version.serving_graph_path:
        paths.append(version.serving_graph_path)
    for path in paths:
        with open(weights_storage().path(path), "r+b") as handle:
            handle.seek(1000)
            handle.write(b"\x00corrupted\x00")


def version_with_nan_outputs(name: str = "older-nan"):
    """A row as an older release could have written it, before outputs were checked: its stored
    graph gives NaN scores for every image."""
    import torch

    from engine.export import onnx_graph
    from engine.weights import load_model
    from registry.models import DEFAULT_CLASS_NAMES, DEFAULT_PREPROCESSING, ModelVersion
    from registry.storage import serving_graph_save, weights_save
    from tests.conftest import starter_weights_bytes

    model = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    with torch.no_grad():
        model.classifier.bias[2] = float("nan")
    weights_path, sha256, _ = weights_save(_save(model.state_dict()))
    graph_path, graph_sha256, _ = serving_graph_save(onnx_graph(model, "densenet121", 224))
    return ModelVersion.objects.create(
        version_name=name,
        storage_path=weights_path,
        sha256=sha256,
        serving_graph_path=graph_path,
        serving_graph_sha256=graph_sha256,
        class_names=DEFAULT_CLASS_NAMES,
        preprocessing=DEFAULT_PREPROCESSING,
    )
