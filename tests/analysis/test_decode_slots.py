"""Fair decoding: a user's second large upload is refused at once (429), a large upload from anyone
waits for the overall slot and is refused (503) when none frees up in time; small files never wait.
Nothing is written for a refused upload."""

from __future__ import annotations

import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from analysis.decode_slots import decode_slot
from audit.models import Prediction
from tests.conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")

NIH_PNG = ("nih_reproduce_chexnet", "images", "00000075_000.png")


def _post(client):
    data = shared_data_path(*NIH_PNG).read_bytes()
    return client.post(
        "/api/v1/predictions/", {"image": SimpleUploadedFile("x.png", data)}, format="multipart"
    )


@pytest.fixture
def every_file_heavy(settings):
    settings.LUNGSITE_HEAVY_DECODE_MB = 0
    settings.LUNGSITE_HEAVY_DECODES_PER_USER = 1
    settings.LUNGSITE_HEAVY_DECODES = 1
    settings.LUNGSITE_DECODE_QUEUE_S = 0


def test_it_refuses_a_users_second_large_decode_at_once(api, clinician, starter_model, every_file_heavy):
    with decode_slot(size=1, user_key=f"user-{clinician.pk}"):
        response = _post(api(clinician))
    assert response.status_code == 429
    assert response.json()["error"]["code"] == "decode_busy"
    assert response["Retry-After"] == "20"
    assert not Prediction.objects.exists()
    assert _post(api(clinician)).status_code == 201  # the slot is free again


def test_it_refuses_a_large_decode_when_the_overall_slots_stay_taken(
    api, clinician, other_clinician, starter_model, every_file_heavy
):
    with decode_slot(size=1, user_key=f"user-{other_clinician.pk}"):
        response = _post(api(clinician))
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "decode_busy" and "Retry-After" in response
    assert not Prediction.objects.exists()


def test_small_files_never_wait(api, clinician, starter_model, settings):
    settings.LUNGSITE_HEAVY_DECODES = 1
    settings.LUNGSITE_DECODE_QUEUE_S = 0
    with decode_slot(size=10**9, user_key=f"user-{clinician.pk}"):  # a large one of theirs decoding
        assert _post(api(clinician)).status_code == 201
