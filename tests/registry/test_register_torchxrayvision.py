"""TorchXRayVision weights and other checkpoints as their owners have them, end to end: registered
through the command and the admin, served through the API on real images, compared with xrv's own
forward and with grad-cam on xrv's model; published AUROC recorded as a claim that never counts as
an evaluation."""

import hashlib
import io
import json

import numpy as np
import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.management import call_command
from django.core.management.base import CommandError
from django.urls import reverse

from audit.models import Prediction
from engine.heatmaps import cams_normalised
from registry.models import DEFAULT_CLASS_NAMES, NOT_EVALUATED_WARNING, ModelVersion
from registry.services import ActivationGateRefused, model_version_activate
from tests.conftest import shared_data_path, starter_weights_bytes
from tests.registry.conftest import stored_objects, variant_weights_bytes
from tests.xrv import XRV_IMAGES, state_dict_bytes, xrv_densenet, xrv_input, xrv_module, xrv_sigmoid

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]


def run(*args, stderr=None) -> dict:
    out = io.StringIO()
    call_command("register_model", *args, stdout=out, stderr=stderr or io.StringIO())
    return json.loads(out.getvalue())


@pytest.fixture(scope="module")
def module_monkeypatch():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def xrv_all(module_monkeypatch, tmp_path_factory):
    """xrv's DenseNet with the labels and op_threshs of its "all" weights (18 trained outputs)."""
    return xrv_densenet(module_monkeypatch, tmp_path_factory.mktemp("xrv"), "densenet121-res224-all", seed=3)


def _post(api, user, parts):
    path = shared_data_path(*parts)
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    response = api(user).post("/api/v1/predictions/", {"image": upload}, format="multipart")
    assert response.status_code == 201, response.content
    return response.json()


def test_the_command_registers_xrv_weights_as_they_are_and_the_api_serves_xrvs_outputs(
    xrv_all, tmp_path, api, clinician
):
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    path = tmp_path / "xrv-all.pt"
    path.write_bytes(state_dict_bytes(xrv_all))  # what docs/models.md tells the owner to run
    err = io.StringIO()
    row = run(str(path), "--version-name", "xrv-all", "--activate", stderr=err)
    # All 18 outputs were trained: lungsite's 13 findings first, the 5 others kept after them.
    extras = ["Hernia", "Lung Lesion", "Fracture", "Lung Opacity", "Enlarged Cardiomediastinum"]
    assert row["class_names"] == DEFAULT_CLASS_NAMES + extras
    assert row["is_active"] is True
    assert row["preprocessing"] == {
        "input_size": 224,
        "channels": 1,
        "value_range": [-1024.0, 1024.0],
        "crop": "center",
        "resize": "skimage",
        "mean": [0.0],
        "std": [1.0],
    }
    targets = list(xrv_all.targets)
    op_threshs = {name: float(xrv_all.op_threshs[targets.index(name)]) for name in row["class_names"]}
    assert row["thresholds"] == pytest.approx(op_threshs)
    assert "TorchXRayVision weights: serving 18 outputs" in err.getvalue()
    version = ModelVersion.objects.get()
    assert version.weights_source["format"] == "torchxrayvision"
    assert version.weights_source["file_sha256"] != version.sha256  # stored converted, said where from

    order = [targets.index(name) for name in row["class_names"]]
    for parts in XRV_IMAGES[:2]:
        body = _post(api, clinician, parts)
        x = xrv_input(parts)
        expected = xrv_sigmoid(xrv_all, x)[0][order]
        findings = body["findings"]
        assert [f["name"] for f in findings] == row["class_names"]
        np.testing.assert_allclose([f["score"] for f in findings], expected, atol=1e-3)
        with torch.inference_mode():
            xrvs_own = xrv_all(torch.from_numpy(x))[0][order].numpy()  # op_threshs applied
        assert [f["positive"] for f in findings] == list(xrvs_own >= 0.5)
        assert [f["threshold"] for f in findings] == pytest.approx(
            [op_threshs[n] for n in row["class_names"]]
        )

    # The stored heatmaps (8-bit levels of each map's maximum) against grad-cam on xrv's own model.
    stored = Prediction.objects.get(pk=body["id"]).heatmap_maps()
    ours = cams_normalised(np.asarray([stored[name] for name in row["class_names"]], np.float32), 224)
    with GradCAM(model=xrv_all, target_layers=[xrv_all.features[-1]]) as cam:
        reference = cam(
            input_tensor=torch.from_numpy(x).repeat(len(order), 1, 1, 1),
            targets=[ClassifierOutputTarget(i) for i in order],
        )
    xrv_all.eval()
    np.testing.assert_allclose(ours, reference, atol=2 / 255)


def test_the_admin_registers_xrv_weights_dropping_the_extra_labels_and_shows_what_it_did(
    xrv_all, client, model_admin
):
    xrv_module()
    client.force_login(model_admin)
    form = {
        "weights": SimpleUploadedFile("xrv.safetensors", state_dict_bytes(xrv_all, "safetensors")),
        "version_name": "xrv-admin",
        "class_names_text": "",
        "architecture": "densenet121",
        "source": "torchxrayvision",
        "extra_outputs": "drop",
        "published_auroc_json": '{"Effusion": 0.87, "Edema": 0.84}',
        "published_auroc_source": "Cohen et al. 2022, TorchXRayVision (MIDL), table 2",
        "thresholds_json": '{"Edema": 0.3}',
        "notes": "",
    }
    response = client.post(reverse("admin:registry_modelversion_add"), form)
    assert response.status_code == 302, response.content.decode()[:3000]
    version = ModelVersion.objects.get()
    assert version.class_names == DEFAULT_CLASS_NAMES
    assert version.thresholds["Edema"] == 0.3  # given in the form: wins over op_threshs
    assert version.thresholds["Effusion"] == pytest.approx(float(xrv_all.op_threshs[7]))
    assert set(version.weights_source["dropped"]) == {
        "Hernia (output 13)",
        "Lung Lesion (output 14)",
        "Fracture (output 15)",
        "Lung Opacity (output 16)",
        "Enlarged Cardiomediastinum (output 17)",
    }
    body = client.get(reverse("admin:registry_modelversion_change", args=[version.pk])).content.decode()
    assert "Profile torchxrayvision: grey image mapped to [-1024, 1024]" in body
    assert "centre square cropped" in body and "224 x 224 (skimage.transform.resize)" in body
    assert "Format: torchxrayvision." in body and "not a lungsite finding (dropped as asked)" in body
    assert "Published, not measured here" in body and "Cohen et al. 2022" in body
    # The model card says it too.
    assert "**Preprocessing.** Profile torchxrayvision" in body
    assert "published, not measured here; not an evaluation" in body


def test_published_auroc_is_shown_as_a_claim_and_never_passes_the_gate(tmp_path, settings, api, model_admin):
    settings.LUNGSITE_ACTIVATION_GATE = True
    path = tmp_path / "w.pt"
    path.write_bytes(variant_weights_bytes(41))
    row = run(
        str(path),
        "--version-name",
        "published",
        "--published-auroc",
        "Effusion=0.87,Cardiomegaly=0.91",
        "--published-auroc-source",
        "the weights' model card",
    )
    assert row["published_auroc"] == {
        "per_class": {"Effusion": 0.87, "Cardiomegaly": 0.91},
        "source": "the weights' model card",
        "status": "published, not measured here",
    }
    assert row["per_class_auroc"] == {} and row["accuracy_auroc"] is None
    version = ModelVersion.objects.get()
    assert version.evaluated_at is None and not version.evaluations.exists()
    assert version.honesty_warning() == NOT_EVALUATED_WARNING
    with pytest.raises(ActivationGateRefused, match="has no evaluation"):
        model_version_activate(version=version)
    body = api(model_admin).get(f"/api/v1/models/{version.pk}/").json()
    assert body["warning"] == NOT_EVALUATED_WARNING
    assert body["published_auroc"]["status"] == "published, not measured here"
    with pytest.raises(CommandError, match="needs its source"):
        run(str(path), "--version-name", "unsourced", "--published-auroc", "Effusion=0.87")
    with pytest.raises(CommandError, match="Name=AUROC pairs"):
        run(str(path), "--version-name", "bad", "--published-auroc", "Effusion:0.87")


def test_the_command_refuses_a_whole_pickled_model_with_the_two_lines(tmp_path, settings):
    from engine.weights import WHOLE_MODEL_FIX, load_model

    path = tmp_path / "model.pt"
    torch.save(load_model(starter_weights_bytes(), architecture="densenet121", num_classes=13), path)
    err = io.StringIO()
    with pytest.raises(CommandError) as caught:
        run(str(path), "--version-name", "whole", stderr=err)
    assert "\n" not in str(caught.value) and "whole pickled model" in str(caught.value)
    assert err.getvalue().splitlines()[-2:] == list(WHOLE_MODEL_FIX)  # as lines, to copy
    assert not ModelVersion.objects.exists() and stored_objects(settings) == []


@pytest.mark.parametrize("architecture", ["efficientnet_b0", "convnext_tiny"])
def test_the_command_registers_the_new_architectures_from_safetensors(
    tmp_path, architecture, client, model_admin
):
    from safetensors.torch import save

    from engine.architectures import architecture_get

    torch.manual_seed(0)
    network = architecture_get(architecture).build(13)
    path = tmp_path / "w.safetensors"
    path.write_bytes(save(network.state_dict()))
    row = run(str(path), "--version-name", architecture, "--architecture", architecture)
    assert row["architecture"] == architecture and row["class_names"] == DEFAULT_CLASS_NAMES
    version = ModelVersion.objects.get()
    assert version.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()  # stored as given
    client.force_login(model_admin)
    response = client.get(reverse("admin:registry_modelversion_weights", args=[version.pk]))
    assert f'{architecture}-{version.short_sha256}.safetensors"' in response["Content-Disposition"]
    assert b"".join(response.streaming_content) == path.read_bytes()
