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


def image_store(*, data: bytes, image: np.ndarray, png: bytes | None = None) -> StoredUpload:
    """Stores the analysed image as a PNG of its decoded pixels (`engine.stored_image`), never the
    uploaded bytes: `png` when the decoding process already wrote it
    (`engine.decode_pool.decode_with_stored_copy`), else written here from `image`. Raises
    StorageUnavailable, leaving nothing behind. Touches no database: the analysis core runs it on a
    second thread while the model runs."""

    from engine import stored_image

    if png is None:
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
        raise StorageUnavailable(
            f"The image store is unavailable ({type(exc).__name__}); nothing was recorded."
        ) from exc
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
            raise DatabaseUnavailable(
                f"The prediction log is unavailable ({type(exc).__name__}); nothing was recorded."
            ) from exc
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


def stored_image_size(*, prediction: Prediction) -> tuple[int, int]:
    """(width, height) of the stored image, read from its header (no pixels decoded). Raises
    StorageUnavailable (also for a stored file that is not a readable image)."""
    from engine.stored_image import image_size

    try:
        with images_storage().open(prediction.image_url, "rb") as handle:
            return image_size(handle)
    except FileNotFoundError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise StorageUnavailable(
            f"The stored image of prediction {prediction.pk} is unreadable ({type(exc).__name__})."
        ) from exc


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

    size = stored_image_size(prediction=prediction)  # from the header: no pixels decoded
    scale = case_scale(cam for cam in cams.values() if isinstance(cam, list))  # one scale per case
    png = heatmap_overlay_png(size, np.asarray(cams[name], dtype=np.float32), scale=scale)
    try:
        saved = storage.save(path, ContentFile(png))
        if saved != path:  # another request rendered it first; keep theirs
            storage.delete(saved)
    except Exception as exc:  # noqa: BLE001 - the PNG is still returned; it renders again next time
        logger.warning("cannot keep heatmap %s: %s", path, exc)
    return png


# --------------------------------------------------------------------------------------------
# Pictures for the pages, from a bounded-size derivative of the stored copy

# The viewer's pixels and the lists' thumbnails come from one derivative of the stored copy, at most
# DISPLAY_MAX_SIDE on its longest side: the full stored copy (up to the decoder's 60 megapixels) is
# decoded once per prediction, never per page view.
DISPLAY_MAX_SIDE = 2048
THUMBNAIL_PX = 96


@dataclass(frozen=True)
class DisplayPixels:
    """The gray levels of the display derivative: (height, width) uint16 holding 0..`maximum`
    (255 for an 8-bit stored copy, 65535 for a 16-bit one), as the stored copy has them."""

    pixels: np.ndarray
    maximum: int

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])


def _kept(path: str) -> bytes | None:
    try:
        storage = images_storage()
        if storage.exists(path):
            with storage.open(path, "rb") as handle:
                return handle.read()
    except Exception as exc:  # noqa: BLE001 - rendered again by the caller
        logger.warning("cannot read %s: %s", path, exc)
    return None


def _keep(path: str, data: bytes) -> None:
    storage = images_storage()
    try:
        saved = storage.save(path, ContentFile(data))
        if saved != path:  # another request rendered it first; keep theirs
            storage.delete(saved)
    except Exception as exc:  # noqa: BLE001 - still returned; rendered again next time
        logger.warning("cannot keep %s: %s", path, exc)


def display_pixels(*, prediction: Prediction) -> DisplayPixels:
    """The stored image at most DISPLAY_MAX_SIDE on its longest side, with its full bit depth (the
    viewer windows these levels itself). Made on first use by the decoding process
    (engine.decode_pool.display_levels: the full stored copy is decoded there, never in this
    thread), kept as a PNG under previews/ and read back from there afterwards. Raises
    StorageUnavailable or FileNotFoundError."""
    import numpy as np
    from django.conf import settings
    from PIL import Image

    from engine import decode_pool
    from engine.decode import DecodeError

    path = f"previews/{prediction.pk}/display.png"
    kept = _kept(path)
    if kept is not None:
        try:
            with Image.open(io.BytesIO(kept)) as pil:
                if pil.mode in ("I;16", "I;16B", "I;16L", "I"):
                    return DisplayPixels(pixels=np.asarray(pil).astype(np.uint16), maximum=65535)
                return DisplayPixels(pixels=np.asarray(pil.convert("L")).astype(np.uint16), maximum=255)
        except Exception as exc:  # noqa: BLE001 - our own file: unreadable means storage trouble
            raise StorageUnavailable(f"The preview of prediction {prediction.pk} is unreadable.") from exc
    data, _ = image_bytes(prediction=prediction)
    try:
        pixels, maximum = decode_pool.display_levels(
            data,
            max_side=DISPLAY_MAX_SIDE,
            timeout_s=settings.LUNGSITE_DECODE_TIMEOUT_S,
            max_mb=settings.LUNGSITE_DECODE_MAX_MB,
        )
    except DecodeError as exc:  # our own stored file: unreadable means storage trouble
        raise StorageUnavailable(f"The stored image of prediction {prediction.pk} is unreadable.") from exc
    del data
    buffer = io.BytesIO()
    # uint8 -> an 8-bit PNG (mode L), uint16 -> a 16-bit one (I;16).
    stored = pixels.astype(np.uint8) if maximum == 255 else pixels
    Image.fromarray(stored).save(buffer, format="PNG", compress_level=1)
    _keep(path, buffer.getvalue())
    return DisplayPixels(pixels=pixels, maximum=maximum)


def display_window(pixels: np.ndarray, maximum: int) -> tuple[float, float]:
    """The gray levels (low, high) that first show as black and white: the whole range of an 8-bit
    image (shown as it was analysed), the 0.5th to 99.5th percentile of a 16-bit one, whose values
    often fill a small part of 0..65535 (the viewer's "Auto"; docs/viewer.md)."""
    import numpy as np

    if maximum == 255:
        return 0.0, 255.0
    low, high = (float(value) for value in np.percentile(pixels, [0.5, 99.5]))
    return (low, high) if high > low else (0.0, float(maximum))


def thumbnail_jpeg(*, prediction: Prediction) -> bytes:
    """A small gray JPEG of the stored image (the lists' thumbnails), windowed as the viewer first
    shows it (display_window): rendered on first fetch from the display derivative, then kept under
    previews/. Raises StorageUnavailable or FileNotFoundError."""
    import numpy as np
    from PIL import Image

    path = f"previews/{prediction.pk}/thumbnail.jpg"
    kept = _kept(path)
    if kept is not None:
        return kept
    display = display_pixels(prediction=prediction)
    low, high = display_window(display.pixels, display.maximum)
    # 16-bit levels to 8-bit through the window (Pillow's convert("L") would clip them at 255).
    levels = np.clip((display.pixels.astype(np.float32) - low) * (255.0 / (high - low)), 0, 255)
    small = Image.fromarray(np.rint(levels).astype(np.uint8))
    small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG", quality=80)
    jpeg = buffer.getvalue()
    _keep(path, jpeg)
    return jpeg
