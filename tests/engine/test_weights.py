"""engine.weights: every accepted layout loads the same tensors; wrong files are refused with
their own message (naming the layer where one is at fault); a pickle that would run code is refused
without running it; weights that would give non-finite outputs never become a serving graph."""

import io
import os
import pickle
import re
import sys

import pytest
import torch

from engine.architectures import architecture_get
from engine.weights import (
    ExportFailed,
    WeightsError,
    load_model,
    load_state_dict,
    save_state_dict,
    serving_graph_from_weights,
)
from tests.conftest import starter_weights_bytes


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    return load_state_dict(starter_weights_bytes())


def _bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def _legacy(state: dict) -> dict:
    # torchvision < 0.3 names: "denselayer1.norm.1.weight" for "denselayer1.norm1.weight".
    pattern = re.compile(r"(denselayer\d+\.(?:norm|relu|conv))([12])\.")
    return {pattern.sub(r"\1.\2.", key): value for key, value in state.items()}


def _assert_same(loaded: dict, state: dict) -> None:
    assert loaded.keys() == state.keys()
    keys = ("features.conv0.weight", "features.denseblock4.denselayer16.norm2.running_var", "classifier.bias")
    for key in keys:
        assert torch.equal(loaded[key], state[key])


@pytest.mark.parametrize(
    "layout",
    ["plain", "state_dict", "model", "dataparallel", "legacy", "chexnet"],
)
def test_it_accepts_the_documented_layouts(state, layout):
    if layout == "plain":
        obj = state
    elif layout == "state_dict":
        obj = {"state_dict": state, "epoch": 12, "best_loss": 0.17}
    elif layout == "model":
        obj = {"model": state}
    elif layout == "dataparallel":
        obj = {"state_dict": {"module." + key: value for key, value in state.items()}}
    elif layout == "legacy":
        obj = _legacy(state)
        assert any(".norm.1." in key for key in obj)
    else:  # CheXNet reproductions: DataParallel(DenseNet121 wrapper) with a Sequential(Linear, Sigmoid) head
        obj = {
            "state_dict": {
                "module.densenet121." + key.replace("classifier.", "classifier.0."): value
                for key, value in _legacy(state).items()
            }
        }
    data = _bytes(obj)
    _assert_same(load_state_dict(data), state)
    model = load_model(data, architecture="densenet121", num_classes=13)
    assert not model.training
    assert torch.equal(model.classifier.weight, state["classifier.weight"])


def test_it_refuses_a_wrong_number_of_outputs(state):
    data = _bytes(state)
    with pytest.raises(WeightsError, match="13 outputs but 14 class names"):
        load_model(data, architecture="densenet121", num_classes=14)


def test_it_refuses_weights_of_another_network(state):
    partial = {key: value for key, value in state.items() if "denseblock4" not in key}
    with pytest.raises(WeightsError, match="do not fit densenet121: .* missing keys"):
        load_model(_bytes(partial), architecture="densenet121", num_classes=13)
    with pytest.raises(WeightsError, match="no densenet121 classifier layer"):
        load_model(_bytes({"fc.weight": torch.zeros(13, 4)}), architecture="densenet121", num_classes=13)
    with pytest.raises(WeightsError, match="no resnet50 classifier layer"):
        load_model(_bytes(state), architecture="resnet50", num_classes=13)
    with pytest.raises(WeightsError, match="Unknown architecture 'vgg16'; supported: densenet121, resnet50"):
        load_model(_bytes(state), architecture="vgg16", num_classes=13)


def test_it_refuses_a_layer_of_the_wrong_shape_and_names_it(state):
    wrong = dict(state)
    wrong["features.conv0.weight"] = torch.zeros(64, 3, 5, 5)
    with pytest.raises(WeightsError) as caught:
        load_model(_bytes(wrong), architecture="densenet121", num_classes=13)
    assert str(caught.value) == (
        "The weights do not fit densenet121: layer features.conv0.weight has shape (64, 3, 5, 5) "
        "where densenet121 has (64, 3, 7, 7)."
    )


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("classifier.weight", float("nan"), "layer classifier.weight holds 1 value that is not a finite"),
        ("classifier.bias", float("inf"), "layer classifier.bias holds 1 value that is not a finite"),
        ("classifier.weight", 1e38, "layer classifier.weight holds a value of magnitude 1e+38"),
        ("features.denseblock2.denselayer3.conv1.weight", float("-inf"), "layer features.denseblock2"),
    ],
)
def test_it_refuses_non_finite_or_absurd_values_and_names_the_layer(state, key, value, message):
    poisoned = {k: v.clone() for k, v in state.items()}
    poisoned[key].view(-1)[0] = value
    with pytest.raises(WeightsError, match="Refused: " + re.escape(message)):
        load_model(_bytes(poisoned), architecture="densenet121", num_classes=13)


def _resnet50_state(seed: int = 0) -> dict:
    torch.manual_seed(seed)
    return architecture_get("resnet50").build(13).state_dict()


@pytest.mark.parametrize("layout", ["plain", "dataparallel_checkpoint"])
def test_it_loads_resnet50_weights(layout):
    state = _resnet50_state()
    if layout == "plain":
        obj = state
    else:
        obj = {"state_dict": {"module." + key: value for key, value in state.items()}, "epoch": 3}
    model = load_model(_bytes(obj), architecture="resnet50", num_classes=13)
    assert torch.equal(model.fc.weight, state["fc.weight"])
    assert torch.equal(model.layer4[2].bn3.running_var, state["layer4.2.bn3.running_var"])
    with pytest.raises(WeightsError, match="no densenet121 classifier layer"):
        load_model(_bytes(obj), architecture="densenet121", num_classes=13)


def test_it_refuses_files_that_are_not_weights():
    with pytest.raises(WeightsError, match="empty"):
        load_state_dict(b"")
    with pytest.raises(WeightsError, match="Not a PyTorch weights file"):
        load_state_dict(b"this is not a checkpoint" * 10)
    with pytest.raises(WeightsError, match="Not a PyTorch weights file"):
        load_state_dict(_bytes({"w": torch.zeros(3)})[:200])
    with pytest.raises(WeightsError, match="no state_dict"):
        load_state_dict(_bytes([1, 2, 3]))
    with pytest.raises(WeightsError, match="not tensors"):
        load_state_dict(_bytes({"w": torch.zeros(3), "note": "hello"}))


class _Hostile:
    """Unpickling this would run a shell command that creates the marker file."""

    marker = ""

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("container", ["torch_save", "plain_pickle", "inside_state_dict"])
def test_it_refuses_a_pickle_that_would_run_code_without_running_it(tmp_path, state, container):
    marker = tmp_path / "pwned"
    hostile = _Hostile()
    hostile.marker = str(marker)
    if container == "torch_save":
        data = _bytes(hostile)
    elif container == "plain_pickle":
        data = pickle.dumps({"state_dict": hostile})
    else:
        data = _bytes({"state_dict": {**state, "classifier.weight": hostile}})

    with pytest.raises(WeightsError) as info:
        load_model(data, architecture="densenet121", num_classes=13)
    assert not marker.exists()
    message = str(info.value)
    if container != "plain_pickle":  # torch reads plain pickles as a legacy format it refuses earlier
        assert "Refused" in message and "run code" in message
    assert "weights_only=False" not in message  # never advise the unsafe retry


@pytest.mark.django_db
def test_it_registers_no_hostile_pickle(tmp_path):
    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
    from registry.services import RegistrationError, model_version_register

    marker = tmp_path / "pwned"
    hostile = _Hostile()
    hostile.marker = str(marker)
    with pytest.raises(RegistrationError):
        model_version_register(data=_bytes(hostile), version_name="evil", class_names=DEFAULT_CLASS_NAMES)
    assert not marker.exists()
    assert not ModelVersion.objects.exists()


# --------------------------------------------------------------------------------------------
# serving_graph_from_weights: the same answers in this process and in a child process, and graphs
# whose outputs are not finite are refused


def test_the_child_process_writes_the_same_graph_as_this_process():
    data = starter_weights_bytes()
    here = serving_graph_from_weights(
        data, architecture="densenet121", num_classes=13, input_size=224, isolate=False
    )
    child = serving_graph_from_weights(
        data, architecture="densenet121", num_classes=13, input_size=224, isolate=True
    )
    assert len(here) > 10_000_000  # DenseNet121's 8 M parameters as float32
    assert child == here


def _wrong_conv_bytes() -> bytes:
    state = load_state_dict(starter_weights_bytes())
    state["features.denseblock1.denselayer1.conv2.weight"] = torch.zeros(32, 128, 1, 1)
    return _bytes(state)


@pytest.mark.parametrize(
    "data, num_classes, message",
    [
        (b"", 13, "The weights file is empty."),
        (b"PK\x03\x04 not a torch file", 13, "Not a PyTorch weights file"),
        (None, 14, "The weights have 13 outputs but 14 class names were given."),
        ("wrong_conv", 13, "layer features.denseblock1.denselayer1.conv2.weight has shape (32, 128, 1, 1)"),
    ],
)
def test_the_child_process_refuses_what_this_process_refuses(data, num_classes, message):
    data = {None: starter_weights_bytes, "wrong_conv": _wrong_conv_bytes}.get(data, lambda: data)()
    refusals = []
    for isolate in (False, True):
        with pytest.raises(WeightsError) as caught:
            serving_graph_from_weights(
                data, architecture="densenet121", num_classes=num_classes, input_size=224, isolate=isolate
            )
        refusals.append(str(caught.value))
    assert refusals[0] == refusals[1]
    assert message in refusals[0]


def test_a_crashed_child_process_is_not_taken_for_a_refusal(monkeypatch):
    monkeypatch.setattr(sys, "executable", "/bin/false")
    with pytest.raises(ExportFailed, match="exit status 1"):
        serving_graph_from_weights(
            b"x", architecture="densenet121", num_classes=13, input_size=224, isolate=True
        )


def test_it_refuses_weights_whose_graph_gives_non_finite_outputs():
    # Finite, modest values that still make every output NaN: a negative running variance.
    model = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    with torch.no_grad():
        model.features.norm5.running_var[:8] = -1.0
    with pytest.raises(WeightsError, match="give scores that are not finite numbers"):
        serving_graph_from_weights(
            save_state_dict(model), architecture="densenet121", num_classes=13, input_size=224, isolate=False
        )


def test_it_reports_each_step_to_progress():
    steps: list[str] = []
    serving_graph_from_weights(
        starter_weights_bytes(),
        architecture="densenet121",
        num_classes=13,
        input_size=224,
        isolate=False,
        progress=steps.append,
    )
    assert len(steps) == 2 and "exporting the serving graph" in steps[0] and "outputs" in steps[1]


# --------------------------------------------------------------------------------------------
# Checkpoints as people saved them: accepted exactly when torch's own load_state_dict accepts them


def _torch_accepts(obj: dict, prefix: str = "") -> bool:
    """What torch itself does with the state dict: torchvision's DenseNet121, strict loading, after
    torch's own DataParallel prefix helper."""
    from collections import OrderedDict

    from torch.nn.modules.utils import consume_prefix_in_state_dict_if_present
    from torchvision.models import densenet121

    state = OrderedDict(obj)
    if hasattr(obj, "_metadata"):
        state._metadata = OrderedDict(obj._metadata)
    if prefix:
        consume_prefix_in_state_dict_if_present(state, prefix)
    try:
        densenet121(weights=None, num_classes=13).load_state_dict(state)
    except RuntimeError:
        return False
    return True


def _without_num_batches_tracked(state, *, metadata_version: int | None):
    """A state_dict as PyTorch before 0.4.1 saved it (no num_batches_tracked). With
    metadata_version=None it has no `_metadata` (torch.save of a plain dict); otherwise every
    module's recorded version is that number (2: BatchNorm's version that has the key)."""
    from collections import OrderedDict

    kept = OrderedDict((k, v) for k, v in state.items() if not k.endswith("num_batches_tracked"))
    if metadata_version is not None:
        kept._metadata = OrderedDict((path, {"version": metadata_version}) for path in state._metadata)
    return kept


@pytest.fixture(scope="module")
def saved_state():
    """The starter's state_dict as model.state_dict() returns it (with its `_metadata`)."""
    model = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    return model.state_dict()


@pytest.mark.parametrize(
    "metadata_version, accepted",
    [(None, True), (1, True), (2, False)],
    ids=["no-metadata", "saved-by-old-torch", "claims-version-2"],
)
def test_it_accepts_missing_num_batches_tracked_exactly_when_torch_does(
    saved_state, metadata_version, accepted
):
    obj = _without_num_batches_tracked(saved_state, metadata_version=metadata_version)
    assert _torch_accepts(obj) is accepted
    for layout in (obj, {"state_dict": {"module." + k: v for k, v in obj.items()}}):
        if layout is not obj and hasattr(obj, "_metadata"):
            from collections import OrderedDict

            layout["state_dict"] = OrderedDict(layout["state_dict"])
            layout["state_dict"]._metadata = OrderedDict(
                ((f"module.{path}" if path else "module"), entry) for path, entry in obj._metadata.items()
            )
            assert _torch_accepts(layout["state_dict"], "module.") is accepted
        if accepted:
            model = load_model(_bytes(layout), architecture="densenet121", num_classes=13)
            assert torch.equal(model.features.norm5.running_var, saved_state["features.norm5.running_var"])
            assert int(model.features.norm5.num_batches_tracked) == 0  # what torch fills in
        else:
            with pytest.raises(
                WeightsError, match=r"do not fit densenet121: 121 missing keys \(.*num_batches_tracked"
            ):
                load_model(_bytes(layout), architecture="densenet121", num_classes=13)


def test_it_accepts_the_arnoweng_chexnet_layout_as_old_pytorch_saved_it(saved_state):
    """DataParallel(DenseNet121 wrapper) with a Sequential(Linear, Sigmoid) head, `norm.1` names,
    no num_batches_tracked, under "state_dict" with the epoch and optimizer as that repository saved."""
    old = _without_num_batches_tracked(saved_state, metadata_version=None)
    obj = {
        "epoch": 99,
        "state_dict": {
            "module.densenet121." + key.replace("classifier.", "classifier.0."): value
            for key, value in _legacy(old).items()
        },
        "best_loss": 0.15,
    }
    model = load_model(_bytes(obj), architecture="densenet121", num_classes=13)
    assert torch.equal(model.classifier.weight, saved_state["classifier.weight"])
    assert torch.equal(
        model.features.denseblock3.denselayer7.norm2.weight,
        saved_state["features.denseblock3.denselayer7.norm2.weight"],
    )


def test_it_accepts_a_model_state_dict_wrapper_and_safetensors(state):
    from safetensors.torch import save

    wrapped = _bytes({"model_state_dict": state, "optimizer_state_dict": {}, "epoch": 3})
    _assert_same(load_state_dict(wrapped), state)
    model = load_model(save(dict(state)), architecture="densenet121", num_classes=13)
    assert torch.equal(model.features.conv0.weight, state["features.conv0.weight"])
    with pytest.raises(WeightsError, match="Not a readable safetensors file"):
        load_state_dict(save({"w": torch.zeros(4)})[:-8])


def test_it_refuses_a_whole_pickled_model_with_the_two_lines_that_fix_it(tmp_path):
    from engine.weights import WHOLE_MODEL_FIX

    model = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    path = tmp_path / "model.pt"
    torch.save(model, path)
    with pytest.raises(WeightsError) as caught:
        load_model(path.read_bytes(), architecture="densenet121", num_classes=13)
    message = str(caught.value)
    assert message.startswith(
        "Refused: the file is a whole pickled model (torchvision.models.densenet.DenseNet)"
    )
    assert message.splitlines()[-2:] == list(WHOLE_MODEL_FIX)
    # The two lines, run as written on that (trusted) file, give a state dict that registers.
    namespace = {"torch": torch}
    code = (
        "\n".join(WHOLE_MODEL_FIX)
        .replace('"model.pt"', repr(str(path)))
        .replace('"state_dict.pt"', repr(str(tmp_path / "state_dict.pt")))
    )
    exec(code, namespace)
    fixed = load_model((tmp_path / "state_dict.pt").read_bytes(), architecture="densenet121", num_classes=13)
    assert torch.equal(fixed.classifier.weight, model.classifier.weight)


@pytest.mark.parametrize("architecture", ["efficientnet_b0", "convnext_tiny"])
def test_it_loads_the_new_architectures(architecture):
    torch.manual_seed(0)
    network = architecture_get(architecture).build(13)
    model = load_model(
        _bytes({"state_dict": network.state_dict()}), architecture=architecture, num_classes=13
    )
    head = architecture_get(architecture).head(model)
    assert torch.equal(head.weight, architecture_get(architecture).head(network).weight)
    with pytest.raises(WeightsError, match=f"no {architecture} classifier layer"):
        load_model(starter_weights_bytes(), architecture=architecture, num_classes=13)


def test_it_builds_one_channel_networks_from_one_channel_weights(state):
    one = dict(state)
    one["features.conv0.weight"] = state["features.conv0.weight"].sum(dim=1, keepdim=True)
    model = load_model(_bytes(one), architecture="densenet121", num_classes=13)
    assert model.features.conv0.in_channels == 1
    x = torch.rand(1, 1, 64, 64)
    reference = load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13)
    with torch.inference_mode():
        # The summed filter on one grey plane is the original filter on that plane repeated 3 times.
        torch.testing.assert_close(model(x), reference(x.repeat(1, 3, 1, 1)), rtol=1e-4, atol=1e-5)
