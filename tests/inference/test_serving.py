"""inference.serving and inference.export: the serving graph run by ONNX Runtime gives the torch
reference's probabilities and heatmaps (and so pytorch_grad_cam's), from one run, on real images;
a worker serving a stored graph never imports torch."""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from inference.export import linear_head, onnx_graph
from inference.heatmaps import cams_normalised
from inference.pipeline import decode, predict, preprocess
from inference.serving import ServingRuntime, class_activation_maps, runtime_for_module
from inference.weights import build_model, load_model
from registry.models import DEFAULT_PREPROCESSING
from tests.conftest import shared_data_path, starter_weights_bytes

REAL_IMAGES = [
    ("nih_reproduce_chexnet", "images", "00000075_000.png"),
    ("nih_reproduce_chexnet", "images", "00000211_000.png"),
    ("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg"),
    ("pydicom_data", "RG1_UNCR.dcm"),
]


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread():
    # Two shared, busy cores: one intra-op thread keeps the torch reference fast (see
    # test_pipeline_heatmaps.py).
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _trained_looking_model(seed: int = 1) -> nn.Module:
    """A DenseNet121 whose batch norms have non-trivial statistics and affine terms (the untrained
    starter's are identities, which would hide a wrong translation of them)."""
    torch.manual_seed(seed)
    model = build_model("densenet121", 13)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        model.classifier.weight.mul_(20)  # spread the probabilities away from 0.5
    return model.eval()


@pytest.fixture(scope="module")
def starter():
    model = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    return model, runtime_for_module(model, 224, threads=1)


@pytest.fixture(scope="module")
def trained_looking():
    model = _trained_looking_model()
    return model, runtime_for_module(model, 224, threads=1)


@pytest.fixture(scope="module")
def tensors():
    return [
        preprocess(decode(shared_data_path(*parts).read_bytes()), DEFAULT_PREPROCESSING)
        for parts in REAL_IMAGES
    ]


def _served(runtime, tensor):
    """(probabilities (K,), cams (K, h, w)) as the serving path computes them from the runtime
    (test_it_is_what_the_pipeline_runs_for_a_runtime checks that this is ONNX Runtime's forward)."""
    output = predict(runtime, tensor)
    return output.probabilities, output.cams


def _assert_same_as_reference(model, runtime, tensor):
    reference = predict(model, tensor)  # the torch path, checked against pytorch_grad_cam
    probabilities, cams = _served(runtime, tensor)
    assert probabilities.shape == (13,) and cams.shape == (13, 7, 7)
    np.testing.assert_allclose(probabilities, reference.probabilities, atol=1e-4)
    np.testing.assert_allclose(cams, reference.cams, rtol=1e-3, atol=1e-5 * float(reference.cams.max()))
    np.testing.assert_allclose(cams_normalised(cams), cams_normalised(reference.cams), atol=1e-3)


@pytest.mark.parametrize("which", ["starter", "trained_looking"])
def test_it_gives_the_torch_reference_probabilities_and_heatmaps(which, request, tensors):
    model, runtime = request.getfixturevalue(which)
    assert runtime.backend == "onnxruntime"
    for tensor in tensors:
        _assert_same_as_reference(model, runtime, tensor)


def test_it_returns_logits_and_the_norm5_feature_map(trained_looking, tensors):
    model, runtime = trained_looking
    logits, features = runtime.forward_features(tensors[0])
    with torch.inference_mode():
        expected_features = model.features(torch.from_numpy(tensors[0]))[0].numpy()
        expected_logits = model(torch.from_numpy(tensors[0]))[0].numpy()
    assert logits.shape == (13,) and features.shape == (1024, 7, 7)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-3)
    np.testing.assert_allclose(features, expected_features, atol=1e-3)
    # torch tensors are accepted as well as arrays
    np.testing.assert_allclose(runtime.forward_features(torch.from_numpy(tensors[0]))[0], logits, atol=1e-6)


def test_it_matches_pytorch_grad_cam_directly(trained_looking, tensors):
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    model, runtime = trained_looking
    tensor = tensors[0]
    ours = cams_normalised(_served(runtime, tensor)[1], 224)
    with grad_cam.GradCAM(model=model, target_layers=[model.features[-1]]) as cam:
        reference = cam(
            input_tensor=torch.from_numpy(tensor).repeat(13, 1, 1, 1),
            targets=[ClassifierOutputTarget(c) for c in range(13)],
        )
    model.eval()
    np.testing.assert_allclose(ours, reference, atol=1e-3)


def test_the_graph_computes_the_maps_as_the_numpy_formula_does(trained_looking, tensors):
    model, runtime = trained_looking
    with torch.inference_mode():
        features = model.features(torch.from_numpy(tensors[1]))[0].numpy()
    maps = class_activation_maps(features, linear_head(model).weight.detach().numpy())
    np.testing.assert_allclose(maps, predict(model, tensors[1]).cams, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(runtime.run(tensors[1])[1], maps, rtol=1e-3, atol=1e-5 * float(maps.max()))


def test_it_writes_a_valid_and_reproducible_onnx_graph():
    onnx = pytest.importorskip("onnx")
    graph = onnx_graph(_trained_looking_model(), 224)
    proto = onnx.load_from_string(graph)
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["logits", "cams", "features"]
    assert [i.name for i in proto.graph.input] == ["input"]
    # The same weights give the same bytes: stored graphs are named by their sha256.
    assert onnx_graph(_trained_looking_model(), 224) == graph
    assert onnx_graph(_trained_looking_model(seed=3), 224) != graph


def test_it_takes_its_threads_from_lungsite_torch_threads(monkeypatch, starter):
    model, _ = starter
    graph = onnx_graph(model, 224)
    monkeypatch.setenv("LUNGSITE_TORCH_THREADS", "2")
    runtime = ServingRuntime.from_graph(graph, 224)
    assert runtime.session.get_session_options().intra_op_num_threads == 2
    # an explicit count wins (the benchmark compares runtimes at equal thread counts)
    assert (
        ServingRuntime.from_graph(graph, 224, threads=1).session.get_session_options().intra_op_num_threads
        == 1
    )


def test_it_serves_with_torch_when_the_graph_cannot_be_written(caplog, tensors):
    model = _trained_looking_model(seed=2)
    model.features.add_module("odd", nn.Hardswish())  # no translation for it
    with caplog.at_level("WARNING", logger="inference.export"):
        runtime = runtime_for_module(model, 224)
    assert runtime is model and "Hardswish" in caplog.text
    _assert_same_as_reference(model, runtime, tensors[0])


def test_it_serves_several_threads_at_once(trained_looking, tensors):
    model, runtime = trained_looking
    expected = [predict(model, t).probabilities for t in tensors]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index):
        try:
            for _ in range(2):
                results[index] = _served(runtime, tensors[index])[0]
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(tensors))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    for index, probabilities in enumerate(expected):
        np.testing.assert_allclose(results[index], probabilities, atol=1e-4)


def test_it_refuses_a_batch(starter, tensors):
    _, runtime = starter
    with pytest.raises(ValueError, match="one image"):
        runtime.run(np.concatenate([tensors[0], tensors[1]]))


def test_it_is_what_the_pipeline_runs_for_a_runtime(trained_looking, tensors):
    model, runtime = trained_looking
    calls = []
    handle = model.features.register_forward_hook(lambda *args: calls.append(1))
    try:
        output = predict(runtime, tensors[0])
    finally:
        handle.remove()
    assert calls == []  # ONNX Runtime ran the forward, not torch
    reference = predict(model, tensors[0])
    np.testing.assert_allclose(output.probabilities, reference.probabilities, atol=1e-4)
    np.testing.assert_allclose(cams_normalised(output.cams), cams_normalised(reference.cams), atol=1e-3)


def test_it_is_what_the_cache_serves(starter_model, tensors):
    from registry import cache

    cache.clear()
    try:
        serving = cache.get_active()
        assert isinstance(serving.model, ServingRuntime) and serving.model.backend == "onnxruntime"
        assert serving.version.pk == starter_model.pk
        reference = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
        _assert_same_as_reference(reference, serving.model, tensors[0])
    finally:
        cache.clear()


_WORKER_SCRIPT = """
import json, os, sys
import django
django.setup()
import lungsite.urls  # every view, API and admin module a worker imports
from inference.heatmaps import heatmap_overlay_png
from inference.pipeline import decode, predict, preprocess
from inference.serving import ServingRuntime
from registry.models import DEFAULT_PREPROCESSING
runtime = ServingRuntime.from_graph(open(sys.argv[1], "rb").read(), 224, threads=1)
image = decode(open(sys.argv[2], "rb").read())
output = predict(runtime, preprocess(image, DEFAULT_PREPROCESSING))
heatmap_overlay_png(image, output.cams[0])
print(json.dumps({
    "torch": sorted(m for m in sys.modules if m == "torch" or m.startswith(("torch.", "torchvision"))),
    "probabilities": output.probabilities.tolist(),
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over exec from the (large) forked parent.
    "peak_rss_mb": next(int(l.split()[1]) for l in open("/proc/self/status") if l.startswith("VmHWM")) / 1024,
}))
"""


def test_a_worker_serving_a_stored_graph_never_imports_torch(starter, tmp_path):
    model, runtime = starter
    graph = tmp_path / "serving.onnx"
    graph.write_bytes(onnx_graph(model, 224))
    image = shared_data_path(*REAL_IMAGES[0])
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", _WORKER_SCRIPT, str(graph), str(image)],
        cwd=root,
        env={**os.environ, "DJANGO_SETTINGS_MODULE": "lungsite.settings", "LUNGSITE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["torch"] == []
    expected = predict(model, preprocess(decode(image.read_bytes()), DEFAULT_PREPROCESSING)).probabilities
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-4)
    # Without torch one serving process stays far below the 700 MB a worker is allowed (with torch,
    # `import torch` alone peaked at ~510 MB here); a generous bound, not a benchmark.
    assert result["peak_rss_mb"] < 600
