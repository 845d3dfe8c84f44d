"""A version's serving precision: FP32 by default; INT8 (ONNX Runtime static quantization,
calibrated on real images at registration) serves a quantized graph and says so in its results,
its honesty statement, its admin page and its model card."""

import io
import json

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from analysis.services import analyse
from engine.serving import ServingRuntime
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from registry.quantization import CalibrationError, calibration_images
from registry.services import RegistrationError, model_version_activate, model_version_register
from registry.storage import serving_graph_read
from tests.conftest import shared_data_path, starter_weights_bytes

pytestmark = pytest.mark.django_db

NIH = ("nih_reproduce_chexnet", "images")


def _images(count: int) -> list[bytes]:
    return calibration_images(shared_data_path(*NIH), count=count)


@pytest.fixture
def int8_version():
    return model_version_register(
        data=starter_weights_bytes(),
        version_name="starter-int8",
        class_names=DEFAULT_CLASS_NAMES,
        untrained=True,
        precision="int8",
        calibration_images=_images(8),
    )


def test_fp32_is_the_default_and_says_nothing_about_precision(starter_model):
    assert starter_model.precision == "fp32"
    assert "serving_precision" not in starter_model.model_card
    assert "INT8" not in starter_model.honesty()["statement"]


def test_int8_registration_serves_a_quantized_graph_close_to_fp32(int8_version, starter_model):
    assert int8_version.precision == "int8"
    graph = serving_graph_read(int8_version)
    assert b"QuantizeLinear" in graph and b"DequantizeLinear" in graph
    entry = int8_version.model_card["serving_precision"]
    assert entry["precision"] == "int8" and entry["calibration_images"] == 8
    assert 0 < entry["max_abs_probability_diff_vs_fp32"] <= 0.05
    # Same weights, same test image: the INT8 graph's probabilities are near the FP32 graph's.
    fp32 = ServingRuntime.from_graph(serving_graph_read(starter_model), threads=1)
    int8 = ServingRuntime.from_graph(graph, threads=1)
    x = np.random.default_rng(0).normal(size=(1, 3, 224, 224)).astype(np.float32)
    diff = np.abs(1 / (1 + np.exp(-fp32.run(x)[0])) - 1 / (1 + np.exp(-int8.run(x)[0])))
    assert diff.max() < 0.05


def test_int8_versions_say_so_in_results_honesty_admin_and_card(
    int8_version, clinician, client, model_admin, api
):
    model_version_activate(version=int8_version, via="command")
    data = shared_data_path(*NIH).joinpath(sorted(p.name for p in shared_data_path(*NIH).iterdir())[0])
    prediction = analyse(upload=SimpleUploadedFile("x.png", data.read_bytes()), user=clinician, source="api")
    assert prediction.results_json["model"]["precision"] == "int8"
    assert "INT8" in prediction.results_json["honesty"]["statement"]
    assert "UNTRAINED" in prediction.results_json["honesty"]["statement"]  # still said first
    answer = api(clinician).get(f"/api/v1/predictions/{prediction.pk}/").json()
    assert answer["model"]["precision"] == "int8" and "INT8" in answer["warning"]
    assert api(model_admin).get(f"/api/v1/models/{int8_version.pk}/").json()["precision"] == "int8"

    from learning.training import model_card_markdown

    assert "**Serving precision.** INT8" in model_card_markdown(int8_version.model_card)

    client.force_login(model_admin)
    body = client.get(reverse("admin:registry_modelversion_change", args=[int8_version.pk])).content.decode()
    assert 'id="int8-note"' in body
    assert "quantized to 8-bit integers" in body


def test_int8_needs_enough_real_images():
    with pytest.raises(RegistrationError, match="at least"):
        model_version_register(
            data=starter_weights_bytes(),
            version_name="too-few",
            precision="int8",
            calibration_images=_images(3),
        )
    with pytest.raises(RegistrationError, match="precision"):
        model_version_register(data=starter_weights_bytes(), version_name="bad", precision="fp16")
    assert not ModelVersion.objects.exists()


def test_register_model_precision_int8(tmp_path):
    weights = tmp_path / "w.pt"
    weights.write_bytes(starter_weights_bytes())
    folder = tmp_path / "calibration"
    folder.mkdir()
    for i, data in enumerate(_images(8)):
        (folder / f"{i}.png").write_bytes(data)
    out = io.StringIO()
    call_command(
        "register_model",
        str(weights),
        "--version-name",
        "cli-int8",
        "--precision",
        "int8",
        "--calibration-images",
        str(folder),
        stdout=out,
        stderr=io.StringIO(),
    )
    json.loads(out.getvalue())
    assert ModelVersion.objects.get(version_name="cli-int8").precision == "int8"
    with pytest.raises(CommandError, match="not a folder"):
        call_command(
            "register_model",
            str(weights),
            "--version-name",
            "cli-int8-b",
            "--precision",
            "int8",
            "--calibration-images",
            str(tmp_path / "absent"),
            stderr=io.StringIO(),
        )
    with pytest.raises(CommandError, match="needs --calibration-images"):
        call_command(
            "register_model", str(weights), "--version-name", "cli-int8-c", "--precision", "int8",
            stderr=io.StringIO(),
        )  # fmt: skip
    assert not ModelVersion.objects.filter(version_name__in=["cli-int8-b", "cli-int8-c"]).exists()


def test_calibration_folder_must_exist(tmp_path):
    with pytest.raises(CalibrationError):
        calibration_images(tmp_path / "absent")
