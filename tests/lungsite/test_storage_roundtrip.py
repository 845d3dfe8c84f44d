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
