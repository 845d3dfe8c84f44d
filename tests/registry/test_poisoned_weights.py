"""Weights cannot poison serving: registration refuses non-finite, absurd or misshapen layers by
name, and a serving version whose outputs are not finite answers 503, records nothing, and the last
good version takes over."""

import io
import re

import pytest
import torch
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from registry.services import (
    ActivationError,
    RegistrationError,
    model_version_activate,
    model_version_register,
)
from tests.conftest import shared_data_path, starter_weights_bytes
from tests.registry.conftest import stored_objects, version_with_nan_outputs

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]

URL = "/api/v1/predictions/"
NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")


def _state() -> dict:
    return torch.load(io.BytesIO(starter_weights_bytes()), map_location="cpu", weights_only=True)


def _save(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("classifier.weight", float("nan"), "layer classifier.weight holds 1 value that is not a finite"),
        ("classifier.bias", 1e38, "layer classifier.bias holds a value of magnitude 1e+38"),
    ],
)
def test_it_refuses_non_finite_or_absurd_weights_naming_the_layer(settings, key, value, message):
    state = _state()
    state[key].view(-1)[0] = value
    with pytest.raises(RegistrationError, match=re.escape(message)):
        model_version_register(data=_save(state), version_name="poisoned", class_names=DEFAULT_CLASS_NAMES)
    assert not ModelVersion.objects.exists()
    assert stored_objects(settings) == []


def test_it_refuses_a_conv_of_the_wrong_shape_naming_the_layer(settings):
    state = _state()
    state["features.denseblock3.denselayer2.conv1.weight"] = torch.zeros(128, 300, 1, 1)
    with pytest.raises(RegistrationError) as caught:
        model_version_register(data=_save(state), version_name="misshapen", class_names=DEFAULT_CLASS_NAMES)
    message = str(caught.value)
    assert "layer features.denseblock3.denselayer2.conv1.weight has shape (128, 300, 1, 1)" in message
    assert "try again" not in message.lower()
    assert stored_objects(settings) == []


def _stored_images(settings) -> list[str]:
    root = settings.STORAGES["xray_images"]["OPTIONS"]["location"]
    return sorted(str(p) for p in root.rglob("*") if p.is_file())


def _post(client):
    path = shared_data_path(*NIH_PNG)
    upload = SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")
    return client.post(URL, {"image": upload}, format="multipart")


def test_non_finite_outputs_answer_503_and_the_last_good_version_serves(
    api, clinician, starter_model, settings
):
    client = api(clinician)
    assert _post(client).status_code == 201  # the starter is loaded and serves
    bad = version_with_nan_outputs()
    # Activation refuses it now (its stored graph is run on a test image)...
    with pytest.raises(ActivationError, match="Cannot activate older-nan: .*not finite"):
        model_version_activate(version=bad)
    # ...but a row made active before that check existed still reaches the workers.
    ModelVersion.objects.filter(pk=starter_model.pk).update(is_active=False)
    ModelVersion.objects.filter(pk=bad.pk).update(is_active=True)
    images_before = _stored_images(settings)

    response = _post(client)
    assert response.status_code == 503
    error = response.json()["error"]
    assert error["code"] == "model_output_not_finite"
    assert "older-nan" in error["message"] and "not finite" in error["message"]
    assert Prediction.objects.count() == 1
    assert _stored_images(settings) == images_before

    response = _post(client)  # the last good version takes over, and says so
    assert response.status_code == 201
    assert response.json()["model"]["id"] == starter_model.pk
    assert Prediction.objects.count() == 2
    assert Prediction.objects.filter(model_id=bad.pk).count() == 0
