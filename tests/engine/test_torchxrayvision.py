"""TorchXRayVision weights, as their owners save them from xrv's own model classes, served by
lungsite: the probabilities equal xrv's own forward on xrv's own preprocessing of real images, the
decisions equal xrv's operating points, and every heatmap equals pytorch_grad_cam's on xrv's model.
Nothing is downloaded (tests/xrv.py)."""

import json
import math

import numpy as np
import pytest
import torch

from engine.decode import decode
from engine.heatmaps import cams_normalised
from engine.pipeline import predict, preprocess
from engine.preprocessing import TORCHXRAYVISION
from engine.serving import ServingRuntime
from engine.weights import WeightsError, load_state_dict, weights_prepare
from engine.xrv_format import LABELS, XrvFormatError, xrv_plan
from registry.models import DEFAULT_CLASS_NAMES
from tests.conftest import shared_data_path
from tests.xrv import (
    XRV_IMAGES,
    no_network,
    state_dict_bytes,
    xrv_densenet,
    xrv_forward,
    xrv_input,
    xrv_module,
    xrv_resnet,
    xrv_sigmoid,
)

FINDINGS = list(DEFAULT_CLASS_NAMES)  # lungsite's 13 findings, in the starter's order

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def module_monkeypatch():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def nih(module_monkeypatch, tmp_path_factory):
    """xrv's DenseNet with NIH's labels and op_threshs (4 outputs untrained), random weights."""
    return xrv_densenet(module_monkeypatch, tmp_path_factory.mktemp("xrv"), "densenet121-res224-nih", seed=1)


def _served(model, architecture, fmt="torch", **kwargs):
    prepared = weights_prepare(
        state_dict_bytes(model, fmt),
        architecture=architecture,
        class_names=None,
        findings=FINDINGS,
        isolate=False,
        **kwargs,
    )
    runtime = ServingRuntime.from_graph(prepared.graph, prepared.preprocessing["input_size"], threads=1)
    return prepared, runtime


def _ours(runtime, prepared, parts):
    return predict(runtime, preprocess(decode(shared_data_path(*parts).read_bytes()), prepared.preprocessing))


def _grad_cam(model, target_layer, x: np.ndarray, outputs: list[int]) -> np.ndarray:
    """pytorch_grad_cam on xrv's model as xrv calls it (op_threshs applied in its forward)."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with GradCAM(model=model, target_layers=[target_layer]) as cam:
        maps = cam(
            input_tensor=torch.from_numpy(x).repeat(len(outputs), 1, 1, 1),
            targets=[ClassifierOutputTarget(i) for i in outputs],
        )
    model.eval()
    return maps


def test_constructing_xrvs_models_touches_no_network(module_monkeypatch):
    xrv = xrv_module()
    with no_network():
        model = xrv.models.DenseNet(weights=None)
    assert model.op_threshs is None and len(model.targets) == 18
    # ResNet has no weights=None: without a published name it refuses before fetching anything.
    with no_network(), pytest.raises(Exception, match="Weights value must be in"):
        xrv.models.ResNet(weights=None)


def test_the_label_list_is_xrvs():
    assert list(LABELS) == list(xrv_module().datasets.default_pathologies)


def test_the_plan_maps_labels_to_findings_and_op_threshs_to_thresholds():
    nan = float("nan")
    points = [0.1 * (i % 9 + 1) for i in range(18)]
    points[14] = nan
    labels = list(LABELS)
    labels[15] = ""
    plan = xrv_plan(outputs=18, op_threshs=points, labels=labels, findings=FINDINGS)
    assert plan.class_names == FINDINGS + ["Hernia", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert plan.order[:3] == [0, 10, 1]  # Atelectasis, Cardiomegaly, Consolidation in xrv's order
    assert plan.thresholds["Cardiomegaly"] == points[10]
    assert set(plan.dropped) == {"Lung Lesion (output 14)", "output 15"}
    dropped = xrv_plan(outputs=18, op_threshs=points, labels=None, findings=FINDINGS, extra_outputs="drop")
    assert dropped.class_names == FINDINGS
    assert "not a lungsite finding" in dropped.dropped["Hernia (output 13)"]
    with pytest.raises(XrvFormatError, match="12 outputs, not xrv's 18"):
        xrv_plan(outputs=12, op_threshs=None, labels=None, findings=FINDINGS)


@pytest.mark.parametrize("fmt", ["torch", "safetensors"])
def test_its_densenet_serves_xrvs_own_probabilities(nih, fmt):
    prepared, runtime = _served(nih, "densenet121", fmt)
    # NIH's weights: 14 trained outputs, 4 untrained (NaN op_threshs) dropped.
    assert prepared.class_names == FINDINGS + ["Hernia"]
    assert prepared.preprocessing == TORCHXRAYVISION
    assert len(prepared.source["dropped"]) == 4
    op_threshs = nih.op_threshs.numpy()
    order = prepared.source["served_outputs"]
    assert [nih.targets[i] for i in order] == prepared.class_names
    assert prepared.thresholds == {
        name: pytest.approx(float(op_threshs[i])) for name, i in zip(prepared.class_names, order, strict=True)
    }
    xrv = xrv_module()
    spread = []
    for parts in XRV_IMAGES:
        x = xrv_input(parts)
        ours = _ours(runtime, prepared, parts)
        # lungsite's probability is xrv's sigmoid output ...
        np.testing.assert_allclose(ours.probabilities, xrv_sigmoid(nih, x)[0][order], atol=1e-3)
        # ... and op_norm of it is xrv's own call, model(x), op_threshs applied.
        calibrated = xrv.models.op_norm(
            torch.from_numpy(ours.probabilities)[None], nih.op_threshs[order][None]
        )
        expected = xrv_forward(nih, x)[0][order]
        np.testing.assert_allclose(calibrated[0].numpy(), expected, atol=1e-3)
        # so "positive" (probability >= threshold) is xrv's output >= 0.5, finding by finding.
        thresholds = np.array([prepared.thresholds[name] for name in prepared.class_names])
        assert list(ours.probabilities >= thresholds) == list(expected >= 0.5)
        spread.append(ours.probabilities)
    assert np.ptp(np.concatenate(spread)) > 0.5  # the comparison saw probabilities across (0, 1)


def test_its_densenet_heatmaps_equal_grad_cam_on_xrvs_model(nih):
    prepared, runtime = _served(nih, "densenet121")
    order = prepared.source["served_outputs"]
    for parts in XRV_IMAGES[:2]:
        x = xrv_input(parts)
        ours = cams_normalised(_ours(runtime, prepared, parts).cams, 224)
        reference = _grad_cam(nih, nih.features[-1], x, order)
        for k, name in enumerate(prepared.class_names):
            np.testing.assert_allclose(ours[k], reference[k], atol=1e-4, err_msg=f"{parts[-1]} {name}")


def test_its_resnet_serves_xrvs_probabilities_and_heatmaps(module_monkeypatch, tmp_path_factory):
    model = xrv_resnet(module_monkeypatch, tmp_path_factory.mktemp("xrv-resnet"), seed=2)
    prepared, runtime = _served(model, "resnet50", extra_outputs="drop")
    assert prepared.preprocessing == {**TORCHXRAYVISION, "input_size": 512}
    assert prepared.class_names == FINDINGS  # extras dropped as asked (Lung Lesion was NaN anyway)
    order = prepared.source["served_outputs"]
    xrv = xrv_module()
    parts = XRV_IMAGES[1]
    x = xrv_input(parts, 512)
    ours = _ours(runtime, prepared, parts)
    np.testing.assert_allclose(ours.probabilities, xrv_sigmoid(model, x)[0][order], atol=1e-3)
    calibrated = xrv.models.op_norm(torch.from_numpy(ours.probabilities)[None], model.op_threshs[order][None])
    np.testing.assert_allclose(calibrated[0].numpy(), xrv_forward(model, x)[0][order], atol=1e-3)
    assert ours.cams.shape == (13, 16, 16) and ours.features.shape == (2048,)
    # grad-cam at 512 px costs a backward pass per finding: three of them.
    picked = [0, 4, 12]
    reference = _grad_cam(model, model.model.layer4, x, [order[k] for k in picked])
    ours_maps = cams_normalised(ours.cams[picked], 512)
    np.testing.assert_allclose(ours_maps, reference, atol=1e-4)


def test_it_keeps_the_one_channel_layer_and_drops_op_threshs_from_what_it_stores(nih):
    prepared, _ = _served(nih, "densenet121")
    state = load_state_dict(prepared.weights)
    assert "op_threshs" not in state
    assert state["features.conv0.weight"].shape == (64, 1, 7, 7)
    assert state["classifier.weight"].shape == (14, 1024)
    order = prepared.source["served_outputs"]
    assert torch.equal(state["classifier.weight"], nih.classifier.weight.detach()[order])
    assert all(math.isnan(nih.op_threshs[i]) for i in range(18) if i not in order)
    # What the row keeps is valid JSON (Postgres' jsonb has no NaN): untrained outputs' points are null.
    json.dumps(prepared.source, allow_nan=False)
    assert prepared.source["op_threshs"][14:] == [None] * 4


def test_it_refuses_xrv_weights_for_an_architecture_xrv_does_not_publish(nih):
    with pytest.raises(WeightsError, match="TorchXRayVision publishes densenet121 and resnet50 weights"):
        _served(nih, "efficientnet_b0")


def test_a_one_channel_file_read_as_torchvision_says_what_to_do(nih):
    with pytest.raises(
        WeightsError, match="takes 1 input channel but the preprocessing gives 3 .*torchxrayvision"
    ):
        weights_prepare(
            state_dict_bytes(nih),
            architecture="densenet121",
            class_names=None,
            source="torchvision",
            findings=FINDINGS,
            isolate=False,
        )


def test_the_child_process_prepares_what_this_process_prepares(nih):
    """A torch-free worker registering xrv weights runs the conversion and export in
    `python -m engine.weights`: the same graph, the same converted weights, the same mapping."""
    data = state_dict_bytes(nih)
    arguments = {
        "architecture": "densenet121",
        "class_names": None,
        "findings": FINDINGS,
        "extra_outputs": "drop",
    }
    here = weights_prepare(data, isolate=False, **arguments)
    child = weights_prepare(data, isolate=True, **arguments)
    assert child == here
    assert child.class_names == FINDINGS and child.weights != data
