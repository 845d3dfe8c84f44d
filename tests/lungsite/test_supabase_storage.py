"""SupabaseStorage against an in-process fake of the Storage REST API (no network), plus an optional
test against a real server when SUPABASE_TEST_URL and SUPABASE_TEST_KEY are set."""

import io
import json
import os
import uuid

import httpx
import pytest
from django.core.exceptions import SuspiciousFileOperation
from django.core.files.base import ContentFile
from django.core.files.storage import storages

from common.supabase_storage import STORAGE_ERRORS, StorageUnavailable, SupabaseStorage
from tests.conftest import starter_weights_bytes
from tests.lungsite.fake_supabase import KEY, URL, FakeSupabaseStorage, use_fake


@pytest.fixture(params=[True, False], ids=["http400-bodies", "real-statuses"])
def fake(request, settings, monkeypatch) -> FakeSupabaseStorage:
    # Older Storage servers send every 4xx as HTTP 400 with the real code in the body; newer ones
    # send the real status. The backend must read both the same way.
    fake = FakeSupabaseStorage(legacy_status=request.param)
    fake.add_bucket("models")
    fake.add_bucket("xray-images")
    return use_fake(settings, monkeypatch, fake)


@pytest.fixture
def store(fake) -> SupabaseStorage:
    return storages["xray_images"]


def test_it_is_selected_for_both_aliases(fake):
    assert isinstance(storages["models"], SupabaseStorage)
    assert storages["models"].bucket == "models"
    assert storages["xray_images"].bucket == "xray-images"


def test_it_creates_its_client_on_first_use(fake, store):
    assert store._client is None
    assert fake.requests == []
    assert store.exists("nothing.png") is False
    assert store._client is not None
    assert fake.paths() == ["/storage/v1/object/info/xray-images/nothing.png"]


def test_it_round_trips_bytes_with_the_content_type(fake, store):
    data = bytes(range(256)) * 40
    name = store.save("2026/11/scan.png", ContentFile(data))

    assert name == "2026/11/scan.png"
    assert fake.objects[("xray-images", name)]["data"] == data
    assert fake.objects[("xray-images", name)]["content_type"] == "image/png"
    upload = [r for r in fake.requests if r.method == "POST" and "/object/xray-images/" in r.url.path][0]
    assert upload.headers["x-upsert"] == "false"
    assert upload.headers["authorization"] == f"Bearer {KEY}"
    with store.open(name) as handle:
        assert handle.read() == data


def test_it_stores_unknown_types_as_octet_stream(fake):
    name = storages["models"].save("weights/abc.pt", ContentFile(b"\x80\x02weights"))
    assert fake.objects[("models", name)]["content_type"] == "application/octet-stream"


def test_it_never_overwrites_an_object(fake, store):
    first = store.save("a.png", ContentFile(b"first"))
    second = store.save("a.png", ContentFile(b"second"))

    assert first == "a.png"
    assert second != first and second.startswith("a_") and second.endswith(".png")
    assert store.open(first).read() == b"first"
    assert store.open(second).read() == b"second"


def test_it_picks_another_name_when_a_racing_writer_took_it(fake, store):
    # exists() said the name was free, then another worker uploaded it: Storage answers 409
    # Duplicate, and the save goes to a fresh name instead of replacing the other worker's bytes.
    store.save("race.png", ContentFile(b"theirs"))
    name = store._save("race.png", ContentFile(b"ours"))

    assert name != "race.png"
    assert store.open("race.png").read() == b"theirs"
    assert store.open(name).read() == b"ours"


def test_it_reports_exists_size_and_times(fake, store):
    store.save("dir/x.png", ContentFile(b"12345"))

    assert store.exists("dir/x.png") is True
    assert store.exists("dir/y.png") is False
    assert store.size("dir/x.png") == 5
    assert store.get_modified_time("dir/x.png").tzinfo is not None


def test_it_deletes_and_missing_is_not_an_error(fake, store):
    store.save("gone.png", ContentFile(b"x"))
    store.delete("gone.png")
    store.delete("gone.png")

    assert store.exists("gone.png") is False
    deletes = [r for r in fake.requests if r.method == "DELETE"]
    assert json.loads(deletes[0].content) == {"prefixes": ["gone.png"]}


def test_it_raises_file_not_found_for_a_missing_object(fake, store):
    with pytest.raises(FileNotFoundError):
        store.open("missing.png")
    with pytest.raises(FileNotFoundError):
        store.size("missing.png")
    with pytest.raises(FileNotFoundError):
        store.url("missing.png")


def test_it_signs_short_lived_urls_that_serve_the_bytes(fake, store, settings):
    settings.LUNGSITE_SIGNED_URL_SECONDS = 120
    store.save("signed.png", ContentFile(b"pixels"))

    url = store.url("signed.png")

    assert url.startswith(f"{URL}/storage/v1/object/sign/xray-images/signed.png?token=")
    sign = [r for r in fake.requests if "/object/sign/" in r.url.path and r.method == "POST"][0]
    assert json.loads(sign.content)["expiresIn"] == "120"
    # Fetched with no key at all: the token alone grants the read.
    response = httpx.Client(transport=fake.transport()).get(url)
    assert response.status_code == 200 and response.content == b"pixels"
    assert store.url_read(url) == b"pixels"


def test_it_lists_folders_and_files(fake, store):
    for name in ("a/1.png", "a/2.png", "a/sub/3.png", "b.png"):
        store.save(name, ContentFile(b"x"))

    assert store.listdir("") == (["a"], ["b.png"])
    assert store.listdir("a") == (["sub"], ["1.png", "2.png"])


def test_it_saves_from_file_objects_and_uploads(fake, store):
    from django.core.files.uploadedfile import SimpleUploadedFile

    upload = SimpleUploadedFile("up.jpg", b"\xff\xd8jpeg", content_type="image/jpeg")
    upload.read()  # a caller that already read it
    name = store.save("up.jpg", upload)

    assert fake.objects[("xray-images", name)]["data"] == b"\xff\xd8jpeg"
    assert fake.objects[("xray-images", name)]["content_type"] == "image/jpeg"
    assert store.save("raw.bin", io.BytesIO(b"raw")) == "raw.bin"


def test_it_refuses_names_that_escape_the_folder(fake, store):
    with pytest.raises(SuspiciousFileOperation):
        store.exists("a/../b.png")
    with pytest.raises(SuspiciousFileOperation):
        store.open("./b.png")


OPERATIONS = {
    "save": lambda s: s.save("new.png", ContentFile(b"x")),
    "open": lambda s: s.open("old.png"),
    "exists": lambda s: s.exists("old.png"),
    "delete": lambda s: s.delete("old.png"),
    "size": lambda s: s.size("old.png"),
    "url": lambda s: s.url("old.png"),
    "listdir": lambda s: s.listdir(""),
}


@pytest.mark.parametrize("operation", OPERATIONS)
@pytest.mark.parametrize(
    "fault",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        503,
        500,
    ],
    ids=["connect-error", "timeout", "http-503", "http-500"],
)
def test_it_turns_every_storage_failure_into_storage_unavailable(fake, store, operation, fault):
    store.save("old.png", ContentFile(b"x"))
    if isinstance(fault, int):
        fake.fail_status = fault
    else:
        fake.raise_exc = fault

    with pytest.raises(StorageUnavailable) as caught:
        OPERATIONS[operation](store)

    assert "Supabase Storage" in str(caught.value)
    assert isinstance(caught.value, STORAGE_ERRORS)


def test_it_says_when_the_bucket_is_missing(fake, store):
    del fake.buckets["xray-images"]

    for operation in ("save", "open", "exists", "url"):
        with pytest.raises(StorageUnavailable, match="bucket 'xray-images' does not exist.*check_storage"):
            OPERATIONS[operation](store)


def test_it_says_when_the_key_is_refused(fake, store):
    fake.key = "another-key"

    with pytest.raises(StorageUnavailable, match="refused.*403"):
        store.exists("x.png")


def test_it_reaches_a_standalone_server_at_supabase_storage_url(fake, settings):
    # The fake serves under /storage/v1/ like Supabase; a standalone server's root is the same
    # thing named directly.
    settings.SUPABASE_URL = "https://unused.example"
    settings.SUPABASE_STORAGE_URL = f"{URL}/storage/v1"
    store = storages["xray_images"]

    store.save("direct.png", ContentFile(b"x"))

    assert store.open("direct.png").read() == b"x"
    assert fake.paths()[0] == "/storage/v1/object/xray-images/direct.png"  # no lookup first


def test_a_hung_storage_costs_one_timeout_per_failed_write(fake, store):
    fake.raise_exc = httpx.ReadTimeout("timed out")

    with pytest.raises(StorageUnavailable, match="timed out"):
        store.save("hung.png", ContentFile(b"x"))

    assert len(fake.requests) == 1


def test_it_keeps_one_client_per_storage(fake, store):
    store.exists("a.png")
    client = store._client
    store.exists("b.png")
    assert store._client is client


def test_it_deconstructs_to_its_bucket():
    path, args, kwargs = SupabaseStorage(bucket="models").deconstruct()
    assert path == "common.supabase_storage.SupabaseStorage"
    assert kwargs == {"bucket": "models"}


def test_it_stores_and_reads_back_registered_weights(fake, db):
    from registry.services import model_version_activate, model_version_register
    from registry.storage import weights_read

    data = starter_weights_bytes()
    version = model_version_register(
        data=data, version_name="starter-on-supabase", class_names=[f"c{i}" for i in range(13)]
    )

    assert fake.objects[("models", version.storage_path)]["data"] == data
    assert weights_read(version) == data
    assert model_version_activate(version=version).is_active


@pytest.mark.skipif(
    not (os.environ.get("SUPABASE_TEST_URL") and os.environ.get("SUPABASE_TEST_KEY")),
    reason="set SUPABASE_TEST_URL and SUPABASE_TEST_KEY (service role key) to test a real Storage server",
)
def test_it_works_against_a_real_storage_server(settings, monkeypatch):
    settings.SUPABASE_URL = os.environ["SUPABASE_TEST_URL"]
    settings.SUPABASE_KEY = os.environ["SUPABASE_TEST_KEY"]
    bucket = os.environ.get("SUPABASE_TEST_BUCKET", "lungsite-test")
    store = SupabaseStorage(bucket=bucket)
    store.bucket_ensure()
    name = f"lungsite-test/{uuid.uuid4().hex}.png"
    data = os.urandom(2048)
    try:
        assert store.save(name, ContentFile(data)) == name
        assert store.exists(name) is True
        assert store.open(name).read() == data
        assert store.size(name) == len(data)
        assert store.url_read(store.url(name)) == data
        assert store.save(name, ContentFile(b"other")) != name
    finally:
        for stored in store.listdir("lungsite-test")[1]:
            store.delete(f"lungsite-test/{stored}")
    assert store.exists(name) is False
    with pytest.raises(FileNotFoundError):
        store.open(name)


def _png(size: int = 256) -> bytes:
    import numpy as np
    from PIL import Image

    pixels = (np.add.outer(np.arange(size), np.arange(size)) % 256).astype("uint8")
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(buffer, format="PNG")
    return buffer.getvalue()


def test_it_serves_a_whole_prediction(fake, starter_model, clinician):
    """Weights read from the `models` bucket, the image stored in `xray-images`, its signed URL
    fetched, a heatmap rendered and kept there too."""
    from django.core.files.uploadedfile import SimpleUploadedFile

    from analysis.services import analyse
    from audit.services import heatmap_png, image_bytes

    assert ("models", starter_model.storage_path) in fake.objects
    upload = SimpleUploadedFile("chest.png", _png(), content_type="image/png")

    prediction = analyse(upload=upload, user=clinician, source="api")

    store = storages["xray_images"]
    assert ("xray-images", prediction.image_url) in fake.objects
    data, content_type = image_bytes(prediction=prediction)
    assert content_type == "image/png" and data[:8] == b"\x89PNG\r\n\x1a\n"
    assert store.url_read(store.url(prediction.image_url)) == data
    finding = starter_model.class_names[0]
    png = heatmap_png(prediction=prediction, name=finding)
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert any(key.startswith(f"heatmaps/{prediction.pk}/") for bucket, key in fake.objects)


def test_it_refuses_a_prediction_when_storage_is_down(fake, starter_model, clinician):
    from django.core.files.uploadedfile import SimpleUploadedFile

    from analysis.services import analyse
    from audit.models import Prediction
    from common.errors import Unavailable
    from registry.cache import get_active

    get_active()  # the model is loaded; only the image store is down
    fake.raise_exc = httpx.ConnectError("connection refused")
    upload = SimpleUploadedFile("chest.png", _png(), content_type="image/png")

    with pytest.raises(Unavailable):
        analyse(upload=upload, user=clinician, source="api")

    assert Prediction.objects.count() == 0
    assert not any(bucket == "xray-images" for bucket, key in fake.objects)
