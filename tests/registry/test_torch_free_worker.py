"""A serving worker never loads torch, not even when a model-admin registers or activates a version
through it (the admin, the activation API): the weights are checked and the serving graph written
in a child process (engine.weights.serving_graph_from_weights)."""

import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import torch

from engine.export import onnx_graph
from engine.weights import load_model, load_state_dict
from tests.conftest import starter_weights_bytes

ROOT = Path(__file__).resolve().parents[2]


def _save(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


# A fresh Django process on its own SQLite, doing what a worker does for a model-admin.
WORKER = """
import hashlib, json, sys
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from registry import cache
from registry.models import DEFAULT_CLASS_NAMES
from registry.services import RegistrationError, model_version_activate, model_version_register
from registry.storage import weights_storage

weights = open(sys.argv[1], "rb").read()
out = {}
first = model_version_register(file=weights, version_name="first", class_names=DEFAULT_CLASS_NAMES)
second = model_version_register(file=weights, version_name="second", class_names=DEFAULT_CLASS_NAMES)
out["graphs"] = [first.serving_graph_sha256, second.serving_graph_sha256]
try:
    junk = b"PK\\x03\\x04 not a torch file"
    model_version_register(file=junk, version_name="junk", class_names=DEFAULT_CLASS_NAMES)
except RegistrationError as exc:
    out["refusal"] = str(exc)
try:
    misshapen = open(sys.argv[2], "rb").read()
    model_version_register(file=misshapen, version_name="misshapen", class_names=DEFAULT_CLASS_NAMES)
except RegistrationError as exc:
    out["misshapen"] = [type(exc).__name__, str(exc)]

model_version_activate(version=first, via="command")
out["serving_first"] = [cache.get_active().version.version_name, cache.get_active().model.backend]

# A damaged graph: activation writes it again, and a worker that meets it loads around it.
with open(weights_storage().path(second.serving_graph_path), "r+b") as handle:
    handle.seek(1000)
    handle.write(b"damaged")
model_version_activate(version=second, via="command")
second.refresh_from_db()
with weights_storage().open(second.serving_graph_path, "rb") as handle:
    out["rewritten"] = hashlib.sha256(handle.read()).hexdigest()
with open(weights_storage().path(second.serving_graph_path), "r+b") as handle:
    handle.seek(1000)
    handle.write(b"damaged")
cache.clear()
serving = cache.get_active()
out["serving_second"] = [serving.version.version_name, serving.model.backend]

out["torch"] = sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision")))
peak = next(line for line in open("/proc/self/status") if line.startswith("VmHWM"))
out["peak_rss_mb"] = int(peak.split()[1]) / 1024
print(json.dumps(out))
"""


def test_registering_and_activating_in_a_worker_never_imports_torch(tmp_path):
    weights = starter_weights_bytes()
    (tmp_path / "weights.pt").write_bytes(weights)
    state = load_state_dict(weights)
    state["features.conv0.weight"] = torch.zeros(64, 3, 3, 3)  # a conv of the wrong shape
    (tmp_path / "misshapen.pt").write_bytes(_save(state))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SUPABASE_"))}
    env.update(DJANGO_SETTINGS_MODULE="lungsite.settings", LUNGSITE_DATA_DIR=str(tmp_path / "data"))
    env["LUNGSITE_ACTIVATION_GATE"] = "0"  # its versions are unevaluated (the gate: test_activation_gate.py)
    done = subprocess.run(
        [sys.executable, "-c", WORKER, str(tmp_path / "weights.pt"), str(tmp_path / "misshapen.pt")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])

    assert out["torch"] == []
    # The graph the child processes wrote is the one this process writes from the same weights.
    model = load_model(weights, architecture="densenet121", num_classes=13)
    expected = hashlib.sha256(onnx_graph(model, "densenet121", 224)).hexdigest()
    assert out["graphs"] == [expected] * 2
    assert out["rewritten"] == expected
    assert "Not a PyTorch weights file" in out["refusal"]
    # A refusal that names the layer, not "the weights checker failed, try again".
    assert out["misshapen"] == [
        "RegistrationError",
        "The weights do not fit densenet121: layer features.conv0.weight has shape (64, 3, 3, 3) "
        "where densenet121 has (64, 3, 7, 7).",
    ]
    assert out["serving_first"] == ["first", "onnxruntime"]
    assert out["serving_second"] == ["second", "onnxruntime"]
    # With torch the worker peaked at 977 MB after one activation through the API; without it
    # it stays where serving alone keeps it (a generous bound, not a benchmark).
    assert out["peak_rss_mb"] < 600
