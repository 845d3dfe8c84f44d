"""Writes to the prediction log: the analysed image (without patient data), the heatmaps and the row,
all or nothing. Heatmap PNGs are rendered when first fetched and then kept."""

from __future__ import annotations

import hashlib
import io
import logging
import re
import time
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.db import DatabaseError
from django.utils import timezone

from audit.integrity import prediction_create_chained
from audit.models import Prediction
from common.errors import DatabaseUnavailable, StorageUnavailable
from engine.heatmap_codec import heatmaps_encode

if TYPE_CHECKING:  # numpy loads with the first prediction: `manage.py check/migrate` never pay for it
    import numpy as np
    from django.contrib.auth.models import AbstractBaseUser
    from django.core.files.storage import Storage

    from registry.models import ModelVersion

logger = logging.getLogger(__name__)


def images_storage() -> Storage:
    return storages["xray_images"]


# --------------------------------------------------------------------------------------------
# The row


def heatmap_data(*, cams: np.ndarray) -> bytes:
    """The raw Grad-CAM maps (K, h, w), findings in model output order, as the row keeps them:
    uint8 levels with one float32 scale per map (engine.heatmap_codec; 698 bytes for 13 maps of
    7x7). Refuses non-finite values (ValueError)."""
    return heatmaps_encode(cams)


def file_name_recorded(name: str | None) -> str:
    """What the log keeps of an upload's file name: the base name only (a client's path may name
    folders after patients), at most 255 characters. A DICOM's file name may still carry patient
    data: it is shown only to those who may see the prediction."""
    base = re.split(r"[\\/]", name or "")[-1]
    return base.strip()[:255]


@dataclass(frozen=True)
class StoredUpload:
    """The analysed image as the log keeps it: its name in xray_images and the stored bytes."""

    name: str
    data: bytes
    sha256: str  # of `data`, covered by the audit chain


def image_store(*, data: bytes, image: np.ndarray) -> StoredUpload:
    """Stores the analysed image as a PNG of its decoded pixels (`engine.stored_image`), never the
    uploaded bytes. Raises StorageUnavailable, leaving nothing behind. Touches no database:
    the analysis core runs it on a second thread while the model runs."""

    from engine import stored_image

    png = stored_image.png_bytes(image)
    name = f"images/{timezone.now():%Y/%m}/{uuid.uuid4().hex}.{stored_image.EXTENSION}"
    storage = images_storage()
    try:
        name = storage.save(name, ContentFile(png))
    except Exception as exc:  # noqa: BLE001 - any backend failure means "storage unavailable"
        # Nothing was written under a name the backend never returned, so there is nothing to
        # remove (and asking a backend that is down would only log a second failure). One line,
        # no traceback: an outage repeats this for every upload.
        logger.error("cannot store the analysed image (%s: %s)", type(exc).__name__, exc)
        raise StorageUnavailable(f"The image store is unavailable ({type(exc).__name__}).") from exc
    return StoredUpload(name=name, data=png, sha256=hashlib.sha256(png).hexdigest())


def image_discard(stored: StoredUpload) -> None:
    """Removes an image stored by `image_store` whose row will not be written."""
    _delete_quietly(images_storage(), stored.name)


def prediction_log(
    *,
    version: ModelVersion,
    data: bytes,
    image: np.ndarray,
    results: dict,
    cams: np.ndarray,
    image_sha256: str,
    user: AbstractBaseUser | None = None,
    source: str = Prediction.SOURCE_WEB,
    started: float | None = None,
    stored: StoredUpload | None = None,
    file_name: str = "",
) -> Prediction:
    """Stores the analysed image (unless `stored` says where `image_store` already put it) and
    writes the row. Either both exist afterwards or neither: a storage failure raises
    StorageUnavailable before any row; a row failure deletes the file and raises DatabaseUnavailable."""
    if stored is None:
        stored = image_store(data=data, image=image)
    try:
        latency_ms = (time.perf_counter() - started) * 1000.0 if started is not None else None
        # The row joins the log's hash chain (audit.integrity), which covers the stored bytes.
        return prediction_create_chained(
            stored_sha256=stored.sha256,
            model=version,
            image_url=stored.name,
            results_json=results,
            file_name=file_name_recorded(file_name),
            image_sha256=image_sha256,
            user=user if getattr(user, "pk", None) else None,
            source=source,
            latency_ms=latency_ms,
            heatmap_data=heatmap_data(cams=cams),
        )
    except Exception as exc:
        image_discard(stored)
        if isinstance(exc, DatabaseError):
            raise DatabaseUnavailable(f"The prediction log is unavailable ({type(exc).__name__}).") from exc
        raise


def _delete_quietly(storage: Storage, name: str) -> None:
    try:
        if storage.exists(name):
            storage.delete(name)
    except Exception as exc:  # noqa: BLE001 - best effort; the original error is what matters
        logger.error(
            "could not remove %s after a failed prediction write (%s: %s)", name, type(exc).__name__, exc
        )


# --------------------------------------------------------------------------------------------
# Reading back


def _content_type(name: str) -> str:
    return "image/jpeg" if name.lower().endswith((".jpg", ".jpeg")) else "image/png"


def image_bytes(*, prediction: Prediction) -> tuple[bytes, str]:
    """The stored analysed image and its content type. Raises StorageUnavailable."""
    try:
        with images_storage().open(prediction.image_url, "rb") as handle:
            return handle.read(), _content_type(prediction.image_url)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StorageUnavailable(f"The image store is unavailable ({type(exc).__name__}).") from exc


def heatmap_name(*, prediction: Prediction, name: str) -> str:
    """The cache file of a finding's overlay. The slug keeps the name readable; the hash of the
    exact name keeps `Mass Lesion` and `Mass_Lesion` (one slug) apart."""
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:80]
    digest = hashlib.sha256(name.encode()).hexdigest()[:12]
    return f"heatmaps/{prediction.pk}/{slug}-{digest}.png"


def heatmap_png(*, prediction: Prediction, name: str) -> bytes:
    """The overlay PNG of one finding: rendered on first fetch, then kept in storage.
    Raises LookupError for a finding the prediction has no map for."""
    import numpy as np

    from engine.decode import DecodeError, decode
    from engine.heatmaps import case_scale, heatmap_overlay_png

    cams = prediction.heatmap_maps()
    if name not in cams or not isinstance(cams[name], list):
        raise LookupError(f"Prediction {prediction.pk} has no heatmap named {name!r}.")
    storage = images_storage()
    path = heatmap_name(prediction=prediction, name=name)
    try:
        if storage.exists(path):
            with storage.open(path, "rb") as handle:
                return handle.read()
    except Exception as exc:  # noqa: BLE001
        logger.warning("cannot read cached heatmap %s: %s", path, exc)

    data, _ = image_bytes(prediction=prediction)
    try:
        image = decode(data, prediction.image_url, max_pixels=10**9)  # our own stored file
    except DecodeError as exc:
        raise StorageUnavailable(
            f"The stored image of prediction {prediction.pk} is unreadable: {exc}"
        ) from exc
    scale = case_scale(cam for cam in cams.values() if isinstance(cam, list))  # one scale per case
    png = heatmap_overlay_png(image, np.asarray(cams[name], dtype=np.float32), scale=scale)
    try:
        saved = storage.save(path, ContentFile(png))
        if saved != path:  # another request rendered it first; keep theirs
            storage.delete(saved)
    except Exception as exc:  # noqa: BLE001 - the PNG is still returned; it renders again next time
        logger.warning("cannot keep heatmap %s: %s", path, exc)
    return png


THUMBNAIL_PX = 96


def thumbnail_jpeg(*, prediction: Prediction) -> bytes:
    """A small gray JPEG of the stored image (the lists' thumbnails): rendered on first fetch, then
    kept in storage under thumbnails/. Raises StorageUnavailable or FileNotFoundError."""
    from PIL import Image

    storage = images_storage()
    path = f"thumbnails/{prediction.pk}.jpg"
    try:
        if storage.exists(path):
            with storage.open(path, "rb") as handle:
                return handle.read()
    except Exception as exc:  # noqa: BLE001 - rendered again below
        logger.warning("cannot read cached thumbnail %s: %s", path, exc)
    data, _ = image_bytes(prediction=prediction)
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.draft("L", (THUMBNAIL_PX * 2, THUMBNAIL_PX * 2))  # JPEG: decode at a reduced scale
            small = pil.convert("L")
            small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
    except Exception as exc:  # noqa: BLE001 - our own stored file: unreadable means storage trouble
        raise StorageUnavailable(f"The stored image of prediction {prediction.pk} is unreadable.") from exc
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    jpeg = buffer.getvalue()
    try:
        saved = storage.save(path, ContentFile(jpeg))
        if saved != path:  # another request rendered it first; keep theirs
            storage.delete(saved)
    except Exception as exc:  # noqa: BLE001 - still returned; rendered again next time
        logger.warning("cannot keep thumbnail %s: %s", path, exc)
    return jpeg
