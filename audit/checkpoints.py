"""Checkpoints of the chain's head outside the database: the last id, its chain hash and (when
verify_audit wrote it) the number of rows, signed with the audit key (audit.keys). A chain cannot
show that rows were cut from its end; a checkpoint can: verify_audit fails when the newest
checkpoint's row is gone or changed, or when the newest checkpoint is not signed with a key.

Each checkpoint is a new JSON object in the xray_images storage under `audit-checkpoints/`,
named by its last id so the newest sorts last, and the same line goes to the log (ship it off the
host to keep a copy that a database or storage administrator cannot reach). They are written by
the appender every LUNGSITE_AUDIT_CHECKPOINT_EVERY ids, by every clean verify_audit, and on a
schedule (`checkpoint_scheduled`: Celery beat, or `manage.py audit_checkpoint` from cron)."""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging

from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.utils import timezone

from audit.keys import UnknownKey, keyring

logger = logging.getLogger("audit.checkpoints")

CHECKPOINT_DIR = "audit-checkpoints"
_SIGNED_FIELDS = ("last_id", "head", "rows", "by", "at", "key_id")


def _signed_text(record: dict) -> str:
    return json.dumps(
        {name: record.get(name) for name in _SIGNED_FIELDS}, sort_keys=True, separators=(",", ":")
    )


def checkpoint_write(head: dict) -> str | None:
    """Signs and stores `head` ({"last_id", "head", "rows", "by"}) and logs it; returns the storage
    name, or None when the storage refused it (logged: a missing checkpoint weakens, not breaks, the log)."""
    keys = keyring()
    record = {**head, "at": timezone.now().isoformat(), "key_id": keys.signing_id}
    record["mac"] = keys.mac(keys.signing_id, _signed_text(record))
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


def signature_problem(record: dict, *, keyed_from: int) -> tuple[str, str] | None:
    """(kind, message) when the checkpoint is not one the audit key signed, else None. Checkpoints
    from before the keyed chain (of a row before `keyed_from`) carry no signature and are accepted."""
    if "mac" not in record:
        if int(record.get("last_id", 0)) < keyed_from:
            return None
        return (
            "checkpoint_forged",
            "the newest checkpoint carries no signature: it was not written by lungsite",
        )
    try:
        expected = keyring().mac(str(record.get("key_id", "")), _signed_text(record))
    except UnknownKey:
        return (
            "unknown_key",
            f"the newest checkpoint is signed with audit key {record.get('key_id')}, which is not configured",
        )
    if not hmac.compare_digest(expected, str(record["mac"])):
        return (
            "checkpoint_forged",
            "the newest checkpoint's signature does not match: it was altered or forged",
        )
    return None


def checkpoint_age_seconds() -> float | None:
    """Seconds since the newest checkpoint was written (None: no checkpoint yet)."""
    latest = checkpoint_latest()
    if latest is None or not latest.get("at"):
        return None
    return (timezone.now() - dt.datetime.fromisoformat(latest["at"])).total_seconds()


def checkpoint_scheduled(*, using: str = "default") -> dict:
    """Signs the chain's head when it moved since the newest checkpoint, after checking the rows
    written since then (a checkpoint never vouches for rows that do not verify). Returns what it
    did: {"written": storage name or None, "last_id", "head", "reason"}."""
    from audit.integrity import keyed_from_id
    from audit.models import Prediction
    from audit.verification import range_verify

    head = Prediction.objects.using(using).order_by("-id").values_list("id", "chain_hash").first()
    if head is None:
        return {"written": None, "last_id": None, "head": None, "reason": "the log is empty"}
    last_id, chain_hash = head
    latest = checkpoint_latest()
    after_id = 0
    if latest is not None:
        problem = signature_problem(latest, keyed_from=keyed_from_id(using))
        if problem is not None:
            return _refused(last_id, chain_hash, problem[1])
        if (latest["last_id"], latest["head"]) == (last_id, chain_hash):
            return {"written": None, "last_id": last_id, "head": chain_hash, "reason": "no new rows"}
        recorded = (
            Prediction.objects.using(using).filter(id=latest["last_id"]).values_list("chain_hash", flat=True)
        )
        if list(recorded) != [latest["head"]]:
            return _refused(
                last_id, chain_hash, f"the checkpointed row {latest['last_id']} is gone or changed"
            )
        after_id = latest["last_id"]
    report = range_verify(using=using, after_id=after_id, through_id=last_id, check_images=False)
    if report.breaks:
        return _refused(last_id, chain_hash, report.first_break["message"])
    name = checkpoint_write({"last_id": last_id, "head": chain_hash, "rows": None, "by": "schedule"})
    return {
        "written": name,
        "last_id": last_id,
        "head": chain_hash,
        "reason": f"{report.rows} new rows verified",
    }


def _refused(last_id: int, chain_hash: str, why: str) -> dict:
    logger.error("audit chain checkpoint refused at row %s: %s (run manage.py verify_audit)", last_id, why)
    return {"written": None, "last_id": last_id, "head": chain_hash, "reason": f"refused: {why}"}
