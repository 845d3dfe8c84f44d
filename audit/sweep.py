"""Removes analysed images that no prediction row names: what a worker killed between storing the
image and committing its row leaves behind (audit.services stores the image first, while the
model runs). `manage.py sweep_storage --older-than 1h` runs it.

Only files under `images/` of the xray_images storage, and only those last written before the
cut-off: a request in flight stores its image seconds before its row commits, so a file younger
than any request can take is never touched (the command refuses cut-offs under MIN_AGE)."""

from __future__ import annotations

import datetime as dt
import logging
import re
from collections.abc import Iterator

from django.core.files.storage import storages
from django.utils import timezone

from audit.models import Prediction

logger = logging.getLogger(__name__)

IMAGES_DIR = "images"
MIN_AGE = dt.timedelta(minutes=10)  # well past the decode timeout plus a forward pass and the insert
_MONTH = re.compile(r"^images/(\d{4})/(\d{2})$")
_BATCH = 500


def _files(storage, folder: str) -> Iterator[tuple[str, list[str]]]:
    """(folder, its file names) for `folder` and every folder under it."""
    try:
        folders, files = storage.listdir(folder)
    except FileNotFoundError:
        return
    yield folder, files
    for name in sorted(folders):
        yield from _files(storage, f"{folder}/{name}")


def _named_by_rows(folder: str, names: list[str]) -> set[str]:
    """Which of `names` (full storage names in `folder`) a prediction row names."""
    month = _MONTH.match(folder)
    if month:
        # images/YYYY/MM holds the images stored that month (audit.services.image_store): read the
        # names of that month's rows through the created_at index (a day of margin each side).
        start = dt.datetime(int(month[1]), int(month[2]), 1, tzinfo=dt.UTC)
        end = (start + dt.timedelta(days=32)).replace(day=1)
        rows = Prediction.objects.filter(
            created_at__gte=start - dt.timedelta(days=1), created_at__lt=end + dt.timedelta(days=1)
        )
        return set(rows.values_list("image_url", flat=True).iterator(chunk_size=5000)) & set(names)
    found: set[str] = set()
    for at in range(0, len(names), _BATCH):
        batch = names[at : at + _BATCH]
        found.update(Prediction.objects.filter(image_url__in=batch).values_list("image_url", flat=True))
    return found


def images_orphaned_sweep(*, older_than: dt.timedelta, dry_run: bool = False) -> dict:
    """Deletes (unless `dry_run`) every image under images/ that no row names and that was last
    written more than `older_than` ago. Returns counts and the names removed."""
    if older_than < MIN_AGE:
        raise ValueError(
            f"--older-than must be at least {MIN_AGE}: younger files may belong to requests in flight"
        )
    storage = storages["xray_images"]
    cutoff = timezone.now() - older_than
    report = {"checked": 0, "recent": 0, "orphaned": 0, "removed": [], "dry_run": dry_run}
    for folder, files in _files(storage, IMAGES_DIR):
        old = []
        for file_name in files:
            name = f"{folder}/{file_name}"
            report["checked"] += 1
            if storage.get_modified_time(name) > cutoff:
                report["recent"] += 1
            else:
                old.append(name)
        if not old:
            continue
        named = _named_by_rows(folder, old)
        for name in old:
            if name in named:
                continue
            report["orphaned"] += 1
            if not dry_run:
                storage.delete(name)
                logger.info("removed %s: no prediction row names it", name)
            report["removed"].append(name)
    return report
