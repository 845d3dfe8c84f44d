import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from registry.models import DEFAULT_CLASS_NAMES, ActivationEvent, ModelVersion
from tests.registry.conftest import (
    dataparallel_checkpoint_bytes,
    hostile_pickle_bytes,
    stored_objects,
    variant_weights_bytes,
    wrong_outputs_bytes,
)

pytestmark = pytest.mark.django_db


def run(*args) -> dict:
    out = io.StringIO()
    call_command("register_model", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.fixture
def weights_file(tmp_path):
    def _write(data: bytes, name: str = "weights.pt"):
        path = tmp_path / name
        path.write_bytes(data)
        return str(path)

    return _write


def test_it_registers_a_file_and_prints_the_row(weights_file):
    row = run(
        weights_file(variant_weights_bytes(10)), "--version-name", "cli-1", "--auroc", "0.8", "--notes", "n"
    )
    version = ModelVersion.objects.get()
    assert row["id"] == version.pk
    assert row["version_name"] == "cli-1"
    assert row["class_names"] == DEFAULT_CLASS_NAMES
    assert row["accuracy_auroc"] == 0.8
    assert row["sha256"] == version.sha256
    assert row["is_active"] is False
    assert version.notes == "n"


def test_it_registers_a_dataparallel_checkpoint_and_activates_it(weights_file):
    row = run(weights_file(dataparallel_checkpoint_bytes()), "--version-name", "dp", "--activate")
    assert row["is_active"] is True
    event = ActivationEvent.objects.get()
    assert (event.version.version_name, event.via) == ("dp", "command")


def test_it_reads_classes_and_thresholds_from_files(weights_file, tmp_path):
    classes = tmp_path / "classes.txt"
    classes.write_text("\n".join(["A", "B", "C", "D", "E"]) + "\n")
    thresholds = tmp_path / "thr.json"
    thresholds.write_text(json.dumps({"A": 0.25, "E": 0.75}))
    row = run(
        weights_file(wrong_outputs_bytes(5)),
        "--version-name",
        "five",
        "--classes-file",
        str(classes),
        "--thresholds-file",
        str(thresholds),
    )
    assert row["class_names"] == ["A", "B", "C", "D", "E"]
    assert row["thresholds"] == {"A": 0.25, "E": 0.75}


def test_it_takes_comma_separated_classes(weights_file):
    row = run(weights_file(wrong_outputs_bytes(5)), "--version-name", "five", "--classes", "A, B,C,D,E")
    assert row["class_names"] == ["A", "B", "C", "D", "E"]


def test_it_refuses_the_wrong_number_of_outputs_in_one_line(weights_file, settings):
    with pytest.raises(CommandError) as info:
        run(weights_file(wrong_outputs_bytes(5)), "--version-name", "bad")
    assert "5 outputs but 13 class names" in str(info.value)
    assert "\n" not in str(info.value)
    assert not ModelVersion.objects.exists()
    assert stored_objects(settings) == []


def test_it_refuses_a_hostile_pickle(weights_file, tmp_path, settings):
    marker = tmp_path / "pwned"
    with pytest.raises(CommandError, match="pickle"):
        run(weights_file(hostile_pickle_bytes(marker)), "--version-name", "evil")
    assert not marker.exists()
    assert not ModelVersion.objects.exists()
    assert stored_objects(settings) == []


def test_it_refuses_a_duplicate_name(weights_file):
    run(weights_file(variant_weights_bytes(11)), "--version-name", "dup")
    with pytest.raises(CommandError, match="already exists"):
        run(weights_file(variant_weights_bytes(12), "other.pt"), "--version-name", "dup")
    assert ModelVersion.objects.count() == 1


def test_it_refuses_thresholds_that_are_not_json(weights_file, tmp_path):
    bad = tmp_path / "thr.json"
    bad.write_text("{Edema: 0.3")
    with pytest.raises(CommandError, match="not valid JSON"):
        run(weights_file(variant_weights_bytes(13)), "--version-name", "x", "--thresholds-file", str(bad))


def test_it_refuses_a_missing_file(tmp_path):
    with pytest.raises(CommandError, match="Cannot read"):
        run(str(tmp_path / "absent.pt"), "--version-name", "x")


def test_it_refuses_a_file_that_is_not_weights(weights_file):
    with pytest.raises(CommandError, match="Not a PyTorch weights file"):
        run(weights_file(b"hello, not a checkpoint"), "--version-name", "x")


def test_it_says_what_it_is_doing_on_stderr(weights_file):
    out, err = io.StringIO(), io.StringIO()
    call_command(
        "register_model",
        weights_file(variant_weights_bytes(14)),
        "--version-name",
        "talk",
        "--activate",
        stdout=out,
        stderr=err,
    )
    lines = err.getvalue().splitlines()
    assert [line.split(" ")[0] for line in lines] == [
        "Loading",
        "Checking",
        "Storing",
        "Registered",
        "Activating",
    ]
    assert "exporting the serving graph" in lines[0]
    assert json.loads(out.getvalue())["is_active"] is True  # stdout stays one JSON object


@pytest.mark.usefixtures("one_torch_thread")
def test_it_registers_and_serves_a_resnet50_with_grad_cam_heatmaps(weights_file, api, clinician):
    """A torchvision ResNet50 state_dict, end to end: registered and activated by the command,
    served through the API on a real X-ray, its stored heatmaps equal to pytorch_grad_cam.GradCAM
    with target layer layer4."""
    import numpy as np
    import torch
    from django.core.files.uploadedfile import SimpleUploadedFile
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from audit.models import Prediction
    from engine.decode import decode
    from engine.heatmaps import cams_normalised
    from engine.pipeline import preprocess
    from engine.weights import load_model, save_state_dict
    from registry.models import DEFAULT_PREPROCESSING
    from tests.conftest import shared_data_path

    torch.manual_seed(5)
    from torchvision.models import resnet50

    network = resnet50(weights=None, num_classes=13)
    row = run(
        weights_file(save_state_dict(network)),
        "--version-name",
        "resnet-1",
        "--architecture",
        "resnet50",
        "--activate",
    )
    assert (row["architecture"], row["is_active"]) == ("resnet50", True)

    path = shared_data_path("nih_reproduce_chexnet", "images", "00000075_000.png")
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    response = api(clinician).post("/api/v1/predictions/", {"image": upload}, format="multipart")
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["model"]["version_name"] == "resnet-1"
    assert [f["name"] for f in body["findings"]] == DEFAULT_CLASS_NAMES
    assert set(body["heatmaps"]) == set(DEFAULT_CLASS_NAMES)

    from engine.pipeline import predict
    from registry.cache import get_active

    stored = Prediction.objects.get(pk=body["id"]).heatmap_maps()
    ours_stored = cams_normalised(np.asarray([stored[name] for name in DEFAULT_CLASS_NAMES], np.float32), 224)
    model = load_model(save_state_dict(network), architecture="resnet50", num_classes=13)
    tensor = preprocess(decode(path.read_bytes()), DEFAULT_PREPROCESSING)
    served = predict(get_active().model, tensor).cams
    ours_served = cams_normalised(served, 224)
    with GradCAM(model=model, target_layers=[model.layer4]) as cam:
        reference = cam(
            input_tensor=torch.from_numpy(tensor).repeat(13, 1, 1, 1),
            targets=[ClassifierOutputTarget(c) for c in range(13)],
        )
    # The served maps: ONNX Runtime's float32 over 50 layers (see
    # tests/engine/test_pipeline_heatmaps.py for the closed form's own 2e-5).
    np.testing.assert_allclose(ours_served, reference, atol=1e-4)
    # The row keeps each map as 8-bit levels of its own maximum (engine.heatmap_codec): within about
    # one level after grad-cam's min-max normalisation.
    np.testing.assert_allclose(ours_stored, reference, atol=2 / 255)
    with torch.inference_mode():
        expected = torch.sigmoid(model(torch.from_numpy(tensor)))[0].numpy()
    np.testing.assert_allclose([f["score"] for f in body["findings"]], expected, atol=1e-4)
