"""The lists' thumbnails and the viewer's display derivative, from the stored copy: 16-bit copies
keep their gray levels (Pillow's convert("L") clipped every 16-bit level to white)."""

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from audit.models import Prediction
from audit.services import THUMBNAIL_PX, display_pixels, image_store
from engine.decode import decode
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from tests.conftest import shared_data_path


def _stored_prediction(user, image: np.ndarray) -> Prediction:
    version = ModelVersion.objects.create(
        version_name="v", storage_path="v.pt", class_names=DEFAULT_CLASS_NAMES, sha256="1" * 64
    )
    stored = image_store(data=b"", image=image)
    findings = [
        {"name": n, "probability": 0.1, "threshold": 0.5, "positive": False} for n in DEFAULT_CLASS_NAMES
    ]
    return Prediction.objects.create(
        model=version,
        user=user,
        image_url=stored.name,
        image_sha256="0" * 64,
        results_json={"findings": findings},
    )


def _thumbnail(client, prediction) -> np.ndarray:
    response = client.get(reverse("prediction-thumbnail", args=[prediction.pk]))
    assert response.status_code == 200 and response["Content-Type"] == "image/jpeg"
    with Image.open(io.BytesIO(response.content)) as jpeg:
        assert max(jpeg.size) == THUMBNAIL_PX
        return np.asarray(jpeg.convert("L"), dtype=np.float32)


def test_it_renders_a_16_bit_chest_radiograph_with_its_gray_levels(client, clinician):
    data = shared_data_path("pydicom_data", "RG1_UNCR.dcm").read_bytes()
    image = decode(data, "RG1_UNCR.dcm")  # float32 in [0, 1]: stored as a 16-bit PNG
    prediction = _stored_prediction(clinician, image)
    client.force_login(clinician)
    thumb = _thumbnail(client, prediction)
    # A radiograph, not a white square: dark lungs and bright bone, the whole range used.
    assert thumb.mean() < 200 and thumb.std() > 30
    assert np.percentile(thumb, 95) - np.percentile(thumb, 5) > 120
    # The same picture as the image the model analysed, at thumbnail size.
    expected = Image.fromarray(np.uint8(np.clip(image, 0, 1) * 255)).resize(thumb.shape[::-1], Image.BILINEAR)
    assert np.corrcoef(thumb.ravel(), np.asarray(expected, dtype=np.float32).ravel())[0, 1] > 0.95


def test_it_keeps_an_8_bit_image_as_it_was(client, clinician):
    ramp = np.tile(np.arange(256, dtype=np.uint8), (256, 1))
    prediction = _stored_prediction(clinician, ramp)
    client.force_login(clinician)
    thumb = _thumbnail(client, prediction)
    assert thumb[:, :4].mean() < 8 and thumb[:, -4:].mean() > 247


def test_it_renders_once_and_keeps_the_derivatives(client, clinician):
    from audit.services import images_storage

    prediction = _stored_prediction(clinician, np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    client.force_login(clinician)
    first = client.get(reverse("prediction-thumbnail", args=[prediction.pk])).content
    storage = images_storage()
    assert storage.exists(f"previews/{prediction.pk}/thumbnail.jpg")
    assert storage.exists(f"previews/{prediction.pk}/display.png")
    storage.delete(prediction.image_url)  # the derivatives serve without the stored copy
    assert client.get(reverse("prediction-thumbnail", args=[prediction.pk])).content == first
    assert display_pixels(prediction=prediction).maximum == 65535


@pytest.mark.parametrize("shape", [(4000, 1000), (1000, 4000)])
def test_it_bounds_the_display_derivative_of_a_large_image(clinician, shape):
    image = np.random.default_rng(1).random(shape, dtype=np.float32)
    prediction = _stored_prediction(clinician, image)
    display = display_pixels(prediction=prediction)
    assert max(display.width, display.height) == 2048 and min(display.width, display.height) == 512
