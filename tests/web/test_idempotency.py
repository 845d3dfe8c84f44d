"""`Idempotency-Key` on POST /api/v1/predictions/: a retry gets the first request's prediction and
never makes a second row (audit.idempotency)."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.files.uploadedfile import SimpleUploadedFile

from audit import idempotency
from audit.integrity import prediction_create_chained
from audit.models import IdempotencyKey, Prediction
from tests.conftest import shared_data_path
from tests.reliability.conftest import stored_files

URL = "/api/v1/predictions/"
KEY = "3f6c1c8e-6a51-4f55-9a1b-0c2f1b7d2e9a"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(autouse=True)
def _fresh_throttle_counts():
    cache.clear()
    yield
    cache.clear()


def _xray(name: str = "00000075_000.png") -> SimpleUploadedFile:
    path = shared_data_path("nih_reproduce_chexnet", "images", name)
    return SimpleUploadedFile(path.name, path.read_bytes(), content_type="image/png")


def _post(client, upload, key: str | None = KEY):
    headers = {} if key is None else {"HTTP_IDEMPOTENCY_KEY": key}
    return client.post(URL, {"image": upload}, format="multipart", **headers)


def test_a_retry_with_the_same_key_gets_the_same_prediction(api, clinician, starter_model):
    client = api(clinician)
    first = _post(client, _xray())
    assert first.status_code == 201, first.content
    again = _post(client, _xray())
    assert again.status_code == 200 and again["Idempotent-Replayed"] == "true"
    assert again.json() == first.json() and again["Location"] == first["Location"]
    assert (
        Prediction.objects.count() == 1 and IdempotencyKey.objects.get().prediction_id == first.json()["id"]
    )
    assert len([path for path in stored_files() if "/images/" in str(path)]) == 1
    # Without a key every request is a new prediction.
    assert _post(client, _xray(), key=None).status_code == 201
    assert Prediction.objects.count() == 2


def test_the_same_key_with_another_image_is_refused(api, clinician, starter_model):
    client = api(clinician)
    first = _post(client, _xray())
    other = _post(client, _xray("00000211_000.png"))
    assert other.status_code == 422
    assert other.json()["error"]["code"] == "idempotency_key_reused"
    assert f"prediction {first.json()['id']}" in other.json()["error"]["message"]
    assert Prediction.objects.count() == 1


def test_keys_belong_to_their_user(api, clinician, other_clinician, starter_model):
    assert _post(api(clinician), _xray()).status_code == 201
    theirs = _post(api(other_clinician), _xray())
    assert theirs.status_code == 201  # the same key from another user is another request
    assert Prediction.objects.count() == 2 and IdempotencyKey.objects.count() == 2


@pytest.mark.parametrize("key", ["", " leading-space", "x" * 256, "tab\there", "caf\u00e9"])
def test_an_unusable_key_is_refused_before_anything_is_done(api, clinician, starter_model, key):
    response = _post(api(clinician), _xray(), key=key)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid"
    assert "Idempotency-Key" in response.json()["error"]["message"]
    assert Prediction.objects.count() == 0


def test_a_refused_first_try_leaves_the_key_free(api, clinician, starter_model):
    client = api(clinician)
    refused = _post(client, SimpleUploadedFile("x.png", b"not an image", content_type="image/png"))
    assert refused.status_code in (400, 415)
    assert IdempotencyKey.objects.count() == 0
    assert _post(client, _xray()).status_code == 201


def test_a_response_lost_after_the_commit_is_answered_on_retry(api, clinician, starter_model, monkeypatch):
    """The row and its key commit together: a worker that dies between the commit and the response
    (here the response fails to render) leaves a key that the retry finds."""
    from web.serializers import PredictionSerializer

    def lost(self, instance):
        raise ConnectionResetError("the client went away")

    client = api(clinician)
    with monkeypatch.context() as patch:
        patch.setattr(PredictionSerializer, "to_representation", lost)
        with pytest.raises(ConnectionResetError):
            _post(client, _xray())
    assert Prediction.objects.count() == 1
    retry = _post(client, _xray())
    assert retry.status_code == 200 and retry.json()["id"] == Prediction.objects.get().pk
    assert Prediction.objects.count() == 1


def test_of_two_requests_racing_with_one_key_only_one_row_stays(clinician, version_row_for_keys):
    """The second request to reach the chain lock finds the key taken: its row is rolled back and it
    answers with the first one's prediction (the race made deterministic: the first request
    commits while the second is between its analysis and its insert)."""

    def write(n: int) -> Prediction:
        data = f"image {n}".encode()
        name = storages["xray_images"].save(f"images/keys/{n}.png", ContentFile(data))
        return prediction_create_chained(
            stored_data=data,
            model=version_row_for_keys,
            image_url=name,
            results_json={"findings": []},
            image_sha256="a" * 64,
            user=clinician,
            source=Prediction.SOURCE_API,
        )

    def second_request() -> Prediction:
        # The first request wins the lock first (a nested call on this thread stands in for it).
        made, replayed = idempotency.prediction_once(
            user=clinician, key=KEY, image_sha256="a" * 64, create=lambda: write(1)
        )
        assert not replayed
        return write(2)

    prediction, replayed = idempotency.prediction_once(
        user=clinician, key=KEY, image_sha256="a" * 64, create=second_request
    )
    assert replayed is True
    assert list(Prediction.objects.values_list("id", flat=True)) == [prediction.pk]
    assert IdempotencyKey.objects.get().prediction_id == prediction.pk


@pytest.fixture
def version_row_for_keys(db):
    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

    return ModelVersion.objects.create(
        version_name="keys", storage_path="weights/k.pt", sha256="b" * 64, class_names=DEFAULT_CLASS_NAMES
    )
