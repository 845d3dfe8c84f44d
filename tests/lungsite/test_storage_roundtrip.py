from django.core.files.base import ContentFile
from django.core.files.storage import storages


def test_it_round_trips_bytes_through_both_aliases():
    payload = bytes(range(256)) * 10
    for alias in ("models", "xray_images"):
        storage = storages[alias]
        name = storage.save("roundtrip/check.bin", ContentFile(payload))
        assert storage.exists(name)
        with storage.open(name, "rb") as handle:
            assert handle.read() == payload
        assert storage.size(name) == len(payload)
        storage.delete(name)
        assert not storage.exists(name)


def test_it_keeps_the_two_aliases_apart():
    storages["models"].save("only-here.bin", ContentFile(b"x"))
    assert not storages["xray_images"].exists("only-here.bin")


def test_it_stores_an_intact_copy_when_the_content_addressed_one_was_damaged():
    from registry.storage import weights_save

    name, sha256, created = weights_save(b"weights-bytes")
    assert created
    assert weights_save(b"weights-bytes") == (name, sha256, False)

    storage = storages["models"]
    storage.delete(name)
    storage.save(name, ContentFile(b"damaged"))
    new_name, new_sha, created = weights_save(b"weights-bytes")
    assert created and new_sha == sha256 and new_name != name
    with storage.open(new_name, "rb") as handle:
        assert handle.read() == b"weights-bytes"
