"""Checkpoints of the chain's head outside the database: the last id, its chain hash and (when
verify_audit wrote it) the number of rows. A chain cannot show that rows were cut from its end;
a checkpoint can: verify_audit fails when the newest checkpoint's row is gone or changed.

Each checkpoint is a new JSON object in the xray_images storage under `audit-checkpoints/`,
named by its last id so the newest sorts last, and the same line goes to the log (ship it off the
host to keep a copy that a database or storage administrator cannot reach)."""

from __future__ import annotations

import json
import logging

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

logger = logging.getLogger("audit.checkpoints")

CHECKPOINT_DIR = "audit-checkpoints"


def checkpoint_write(head: dict) -> str | None:
    """Stores `head` ({"last_id", "head", "rows", "by"}) and logs it; returns the storage name, or
    None when the storage refused it (logged: a missing checkpoint weakens, not breaks, the log)."""
    record = {**head, "at": timezone.now().isoformat()}
    line = json.dumps(record, sort_keys=True)
    logger.info("audit chain checkpoint %s", line)
    name = f"{CHECKPOINT_DIR}/{int(head['last_id']):019d}-{head['head'][:16]}.json"
    try:
        return storages["xray_images"].save(name, ContentFile(line.encode()))
    except Exception as exc:  # noqa: BLE001 - any storage failure: the log line above remains
        logger.error("cannot store the audit chain checkpoint %s: %s", name, exc)
        return None


def checkpoint_latest() -> dict | None:
    """The newest stored checkpoint (highest last_id), or None when there is none."""
    storage = storages["xray_images"]
    try:
        _, files = storage.listdir(CHECKPOINT_DIR)
    except FileNotFoundError:
        return None
    names = sorted(name for name in files if name.endswith(".json"))
    if not names:
        return None
    with storage.open(f"{CHECKPOINT_DIR}/{names[-1]}", "rb") as handle:
        return json.loads(handle.read())
