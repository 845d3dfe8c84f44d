"""engine.export and engine.serving: the graph exported by torch.onnx.export and run by ONNX
Runtime gives the network's own logits and pytorch_grad_cam's heatmaps, for every architecture in
the table, from one run, on real images; a worker serving a stored graph never imports torch."""

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

from engine.architectures import ARCHITECTURES, architecture_get
from engine.decode import decode
from engine.export import ServingModule, onnx_graph
from engine.heatmaps import cams_normalised
from engine.pipeline import NonFiniteOutput, predict, predict_batch, preprocess
from engine.serving import ServingRuntime
from engine.weights import load_model
from registry.models import DEFAULT_PREPROCESSING
from tests.conftest import shared_data_path, starter_weights_bytes

REAL_IMAGES = [
    ("nih_reproduce_chexnet", "images", "00000075_000.png"),
    ("nih_reproduce_chexnet", "images", "00000211_000.png"),
    ("kermany_pneumonia_model_package", "person1946_bacteria_4874.jpeg"),
    ("pydicom_data", "RG1_UNCR.dcm"),
]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def trained_looking_model(architecture: str = "densenet121", seed: int = 1) -> nn.Module:
    """A network whose batch norms have non-trivial statistics and affine terms (an untrained
    one's are identities, which would hide a wrong translation of them)."""
    torch.manual_seed(seed)
    spec = architecture_get(architecture)
    model = spec.build(13)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.3, 0.3)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
        spec.head(model).weight.mul_(20)  # spread the probabilities away from 0.5
    return model.eval()


def runtime_of(model: nn.Module, architecture: str = "densenet121") -> ServingRuntime:
    return ServingRuntime.from_graph(onnx_graph(model, architecture, 224), 224, threads=1)


@pytest.fixture(scope="module")
def starter():
    model = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    return model, runtime_of(model)


@pytest.fixture(scope="module")
def trained_looking():
    model = trained_looking_model()
    return model, runtime_of(model)


@pytest.fixture(scope="module")
def resnet():
    model = trained_looking_model("resnet50")
    return model, runtime_of(model, "resnet50")


@pytest.fixture(scope="module")
def tensors():
    return [
        preprocess(decode(shared_data_path(*parts).read_bytes()), DEFAULT_PREPROCESSING)
        for parts in REAL_IMAGES
    ]


def _reference(model, architecture, tensor):
    """(probabilities, cams) of the exported module run in torch."""
    with torch.inference_mode():
        logits, cams, _ = ServingModule(model, architecture)(torch.from_numpy(tensor))
    return torch.sigmoid(logits)[0].numpy(), cams[0].numpy()


def _grad_cam(model, architecture, tensor) -> np.ndarray:
    grad_cam = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    # The library computes one finding per sample: a batch of 13 copies, finding c on copy c.
    target = architecture_get(architecture).target_layer(model)
    with grad_cam.GradCAM(model=model, target_layers=[target]) as cam:
        maps = cam(
            input_tensor=torch.from_numpy(tensor).repeat(13, 1, 1, 1),
            targets=[ClassifierOutputTarget(c) for c in range(13)],
        )
    model.eval()
    return maps


@pytest.mark.parametrize(
    "which, architecture",
    [("starter", "densenet121"), ("trained_looking", "densenet121"), ("resnet", "resnet50")],
)
def test_it_gives_the_exported_modules_probabilities_and_heatmaps(which, architecture, request, tensors):
    model, runtime = request.getfixturevalue(which)
    assert runtime.backend == "onnxruntime"
    for tensor in tensors:
        expected_probabilities, expected_cams = _reference(model, architecture, tensor)
        output = predict(runtime, tensor)
        assert output.probabilities.shape == (13,) and output.cams.shape == (13, 7, 7)
        np.testing.assert_allclose(output.probabilities, expected_probabilities, atol=1e-4)
        np.testing.assert_allclose(
            output.cams, expected_cams, rtol=1e-3, atol=1e-5 * float(expected_cams.max())
        )
        np.testing.assert_allclose(cams_normalised(output.cams), cams_normalised(expected_cams), atol=1e-3)


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_the_exported_module_gives_the_networks_own_logits(architecture, tensors):
    model = trained_looking_model(architecture, seed=4)
    x = torch.from_numpy(tensors[0])
    module = ServingModule(model, architecture)
    with torch.inference_mode():
        logits, cams, features = module(x)
        expected = model(x)
        from_features = module.head(features)  # the pooled features are the classifier's input
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)
    assert cams.shape == (1, 13, 7, 7) and features.shape == (1, module.head.in_features)
    torch.testing.assert_close(from_features, expected, rtol=1e-5, atol=1e-5)


def test_it_returns_logits_and_the_pooled_features(trained_looking, tensors):
    model, runtime = trained_looking
    logits, features = runtime.forward_features(tensors[0])
    with torch.inference_mode():
        trunk = model.features(torch.from_numpy(tensors[0]))
        expected_features = torch.relu(trunk).mean(dim=(2, 3))[0].numpy()  # the classifier's input
        expected_logits = model(torch.from_numpy(tensors[0]))[0].numpy()
    assert logits.shape == (13,) and features.shape == (1024,)
    np.testing.assert_allclose(logits, expected_logits, atol=1e-3)
    np.testing.assert_allclose(features, expected_features, atol=1e-3)
    # torch tensors are accepted as well as arrays
    np.testing.assert_allclose(runtime.forward_features(torch.from_numpy(tensors[0]))[0], logits, atol=1e-6)
    # predict and predict_batch carry the same features
    np.testing.assert_allclose(predict(runtime, tensors[0]).features, features, atol=1e-5)
    batch = predict_batch(runtime, np.concatenate([tensors[0], tensors[1]]))
    np.testing.assert_allclose(batch[0].features, features, atol=1e-5)
    assert batch[1].features.shape == (1024,)


def test_it_pools_the_feature_map_of_a_graph_exported_before_features_were_pooled():
    from engine.serving import pooled_features

    maps = np.array([[[[-1.0, 3.0], [1.0, 0.0]], [[2.0, 2.0], [2.0, 2.0]]]], dtype=np.float32)  # (1, 2, 2, 2)
    np.testing.assert_allclose(pooled_features(maps), [[1.0, 2.0]])
    np.testing.assert_allclose(pooled_features(np.ones((3, 5))), np.ones((3, 5)))


@pytest.mark.parametrize("which, architecture", [("trained_looking", "densenet121"), ("resnet", "resnet50")])
def test_it_matches_pytorch_grad_cam_directly(which, architecture, request, tensors):
    model, runtime = request.getfixturevalue(which)
    tensor = tensors[0]
    ours = cams_normalised(predict(runtime, tensor).cams, 224)
    np.testing.assert_allclose(ours, _grad_cam(model, architecture, tensor), atol=1e-3)


def test_it_exports_a_valid_and_reproducible_onnx_graph():
    onnx = pytest.importorskip("onnx")
    graph = onnx_graph(trained_looking_model(), "densenet121", 224)
    proto = onnx.load_from_string(graph)
    onnx.checker.check_model(proto)
    assert [o.name for o in proto.graph.output] == ["logits", "cams", "features"]
    assert [i.name for i in proto.graph.input] == ["input"]
    # The same weights give the same bytes: stored graphs are named by their sha256.
    assert onnx_graph(trained_looking_model(), "densenet121", 224) == graph
    assert onnx_graph(trained_looking_model(seed=3), "densenet121", 224) != graph


def test_it_takes_its_threads_from_lungsite_torch_threads(monkeypatch, starter):
    model, _ = starter
    graph = onnx_graph(model, "densenet121", 224)
    monkeypatch.setenv("LUNGSITE_TORCH_THREADS", "2")
    runtime = ServingRuntime.from_graph(graph, 224)
    assert runtime.session.get_session_options().intra_op_num_threads == 2
    # an explicit count wins (the benchmark compares runtimes at equal thread counts)
    assert (
        ServingRuntime.from_graph(graph, 224, threads=1).session.get_session_options().intra_op_num_threads
        == 1
    )


def test_it_refuses_to_return_non_finite_outputs(tensors):
    model = trained_looking_model(seed=5)
    with torch.no_grad():
        model.classifier.bias[3] = float("nan")  # what load_model refuses; built here directly
    with pytest.raises(NonFiniteOutput, match="not finite"):
        predict(runtime_of(model), tensors[0])


def test_it_serves_several_threads_at_once(trained_looking, tensors):
    model, runtime = trained_looking
    expected = [_reference(model, "densenet121", t)[0] for t in tensors]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def work(index):
        try:
            for _ in range(2):
                results[index] = predict(runtime, tensors[index]).probabilities
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


def test_it_is_what_the_cache_serves(starter_model, tensors):
    from registry import cache

    cache.clear()
    try:
        serving = cache.get_active()
        assert isinstance(serving.model, ServingRuntime) and serving.model.backend == "onnxruntime"
        assert serving.version.pk == starter_model.pk
        reference = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
        expected_probabilities, expected_cams = _reference(reference, "densenet121", tensors[0])
        output = predict(serving.model, tensors[0])
        np.testing.assert_allclose(output.probabilities, expected_probabilities, atol=1e-4)
        np.testing.assert_allclose(cams_normalised(output.cams), cams_normalised(expected_cams), atol=1e-3)
    finally:
        cache.clear()


_WORKER_SCRIPT = """
import json, os, sys
import django
django.setup()
import lungsite.urls  # every view, API and admin module a worker imports
from engine.decode import decode
from engine.heatmaps import heatmap_overlay_png
from engine.pipeline import predict, preprocess
from engine.serving import ServingRuntime
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
    graph.write_bytes(onnx_graph(model, "densenet121", 224))
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
    tensor = preprocess(decode(image.read_bytes()), DEFAULT_PREPROCESSING)
    expected = _reference(model, "densenet121", tensor)[0]
    np.testing.assert_allclose(result["probabilities"], expected, atol=1e-4)
    # Without torch one serving process stays far below the 700 MB a worker is allowed (with torch,
    # `import torch` alone peaked at ~510 MB here); a generous bound, not a benchmark.
    assert result["peak_rss_mb"] < 600
