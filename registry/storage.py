"""Weights files in the `models` storage: content-addressed names, verified reads."""

import hashlib

from django.core.files.base import ContentFile
from django.core.files.storage import Storage, storages

from registry.models import ModelVersion


class WeightsIntegrityError(Exception):
    """The stored bytes are missing or no longer match the sha256 recorded in the row."""


class WeightsStorageUnavailable(Exception):
    """The `models` storage could not be reached or refused the request (a 503: try again later)."""


def _unavailable(exc: Exception) -> WeightsStorageUnavailable:
    # The exception's type, not its text: a backend's message can hold server paths or URLs.
    return WeightsStorageUnavailable(f"The weights store is unavailable ({type(exc).__name__}).")


def weights_storage() -> Storage:
    return storages["models"]


def weights_name(sha256: str) -> str:
    # Named by content: the same bytes registered twice are stored once, and a name never
    # points at different bytes.
    return f"weights/{sha256}.pt"


def serving_graph_name(sha256: str) -> str:
    return f"serving/{sha256}.onnx"


def _save_by_content(data: bytes, name_of) -> tuple[str, str, bool]:
    sha256 = hashlib.sha256(data).hexdigest()
    name = name_of(sha256)
    storage = weights_storage()
    try:
        if storage.exists(name):
            with storage.open(name, "rb") as handle:
                if hashlib.sha256(handle.read()).hexdigest() == sha256:
                    return name, sha256, False
            # The copy under this name was damaged after it was stored: keep it for whoever
            # investigates, and store an intact copy under a name the storage picks beside it.
        saved = storage.save(name, ContentFile(data))
    except Exception as exc:  # noqa: BLE001 - any backend failure means "storage unavailable"
        raise _unavailable(exc) from exc
    return saved, sha256, True


def _read_verified(path: str, sha256: str, what: str) -> bytes:
    try:
        with weights_storage().open(path, "rb") as handle:
            data = handle.read()
    except FileNotFoundError as exc:
        raise WeightsIntegrityError(f"The {what} are missing from storage ({path}).") from exc
    except Exception as exc:  # noqa: BLE001 - any backend failure means "storage unavailable"
        raise _unavailable(exc) from exc
    digest = hashlib.sha256(data).hexdigest()
    if digest != sha256:
        raise WeightsIntegrityError(
            f"The stored {what} do not match their sha256 (recorded {sha256[:12]}, found "
            f"{digest[:12]}): the file was changed or corrupted."
        )
    return data


def weights_save(data: bytes) -> tuple[str, str, bool]:
    """Stores the bytes; returns (name, sha256, created) where created says whether this call wrote."""
    return _save_by_content(data, weights_name)


def weights_read(version: ModelVersion) -> bytes:
    """The version's weights bytes, verified against its recorded sha256."""
    return _read_verified(version.storage_path, version.sha256, f"weights of {version.version_name}")


def serving_graph_save(data: bytes) -> tuple[str, str, bool]:
    """Stores a serving graph (engine.export) by content; returns (name, sha256, created)."""
    return _save_by_content(data, serving_graph_name)


def serving_graph_read(version: ModelVersion) -> bytes:
    """The version's ONNX serving graph, verified against its recorded sha256."""
    return _read_verified(
        version.serving_graph_path,
        version.serving_graph_sha256,
        f"serving graph of {version.version_name}",
    )
