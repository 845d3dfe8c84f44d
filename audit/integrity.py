"""The hash chain of the prediction log: a removed, inserted or altered row is detectable.

Every row stores `prev_hash` (the chain hash of the row before it, by id; "" for the first row) and
`chain_hash` = HMAC-SHA256(audit key, prev_hash + canonical JSON of the row's immutable fields),
with a key the database does not hold (audit.keys): whoever may only INSERT cannot make a row
that verifies. (Rows of chain versions 1 and 2 used sha256 without a key.) A row is appended
in one transaction: take the chain's lock, read the last row's hash, hash the new row, save() it.
Concurrent writers therefore cannot fork the chain, and id order is chain order.

The hash is computed before the insert (the log is append-only: the row cannot be updated after),
so it covers what the writer knows then: created_at is set here, not by the database, and the id
is left out (its place is given by the link to the previous row).

Three forms exist, named by the row's `chain_version` (which the hash covers):
- 1: the heatmaps as JSON lists of floats inside the row (rows written before heatmap_data existed);
- 2: the heatmaps as bytes in heatmap_data (engine.heatmap_codec), hashed as the sha256 of those bytes, plus
  file_name;
- 3: version 2's fields plus the id of the key (`chain_key_id`), hashed with HMAC-SHA256 under that key.
Rows keep the form they were written in, so old chains verify unchanged; from the id recorded in
ChainGenesis.keyed_from_id on (and after any version 3 row), a row of version 1 or 2 is a break.

A chain alone cannot reveal that the newest rows were cut off: audit.checkpoints records the head
(count and last hash) outside the database, and verify_audit compares the chain with it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import math
from collections import namedtuple
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass

from django.conf import settings
from django.core.files.storage import storages
from django.db import connections, router, transaction
from django.db.models import TextField
from django.db.models.functions import Cast
from django.utils import timezone

from audit.idempotency import key_bind_pending
from audit.keys import Keyring, UnknownKey, keyring
from audit.models import ChainGenesis, Prediction
from audit.streaming import rows_streamed
from common import metrics

logger = logging.getLogger(__name__)

CHAIN_VERSION = 3
KEYED_VERSION = 3  # the first version whose hash needs the audit key
# Any constant works; this one spells "lung" so a DBA reading pg_locks can tell whose it is.
_ADVISORY_LOCK_KEY = 0x6C756E67


def _canonical(value):
    """JSON values as every database gives them back: jsonb rewrites 1e+16 as 10000000000000000
    and loses -0.0, so integral floats become ints before hashing, on the way in and out alike."""
    kind = type(value)
    if kind is float:
        if not math.isfinite(value):
            raise ValueError(f"non-finite number {value!r} in an audit row")
        return int(value) if value.is_integer() else value
    if kind is str or kind is int or kind is bool or value is None:
        return value
    if kind is dict:
        return {str(key): _canonical(item) for key, item in value.items()}
    if kind is list or kind is tuple:
        return [_canonical(item) for item in value]
    # numpy scalars, subclasses and the like: hash what JSONField would have stored.
    return _canonical(json.loads(json.dumps(value, default=float)))


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def _float_canonical(text: str) -> float | int:
    value = float(text)
    if value.is_integer():
        return int(value)
    if math.isfinite(value):
        return value
    raise ValueError(f"non-finite number {text!r} in an audit row")


def _refuse_constant(name: str):
    raise ValueError(f"non-finite number {name!r} in an audit row")


def json_canonical(text: str | None):
    """JSON text as the database stores it -> the value `_canonical(json.loads(text))` gives, in
    one parse (integral floats become ints as they are parsed). verify_audit reads every row's
    JSON this way instead of decoding it and then walking it again."""
    if text is None:
        return None
    return _canonical_decode(text)


# One decoder and one encoder for every row: json.loads/dumps with options build a new one per call.
_canonical_decode = json.JSONDecoder(parse_float=_float_canonical, parse_constant=_refuse_constant).decode
_canonical_encode = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode


def _payload(row, results_json, heatmaps) -> dict:
    """The fields the chain covers, from `row` (a Prediction or anything with its field names as
    attributes) and its JSON fields already in canonical form."""
    payload = {
        "v": row.chain_version,
        "created_at": _iso(row.created_at),
        "model_id": row.model_id,
        "image_url": row.image_url,
        "image_sha256": row.image_sha256,
        "stored_sha256": row.stored_sha256,
        "user_id": row.user_id,
        "source": row.source,
        "latency_ms": _canonical(row.latency_ms),
        "results_json": results_json,
        "heatmaps": heatmaps,
    }
    if row.chain_version == 1:
        return payload
    if row.chain_version not in (2, 3):
        raise ValueError(f"unknown chain version {row.chain_version!r}")
    payload["heatmap_data"] = hashlib.sha256(bytes(row.heatmap_data or b"")).hexdigest()
    payload["file_name"] = row.file_name
    if row.chain_version == 3:
        payload["key_id"] = row.chain_key_id
    return payload


def chain_payload(row: Prediction) -> dict:
    """The fields the chain covers (everything a reader of the log relies on, minus the id), in
    the row's chain version."""
    return _payload(row, _canonical(row.results_json), _canonical(row.heatmaps))


def _body(payload: dict) -> str:
    return _canonical_encode(payload)


def chain_body(row: Prediction) -> str:
    """The row's canonical JSON (sorted keys, no spaces, ASCII only): what the chain hashes after
    the previous row's hash."""
    return _body(chain_payload(row))


def compute_chain_hash(prev_hash: str, row: Prediction, keys: Keyring | None = None) -> str:
    """The row's chain hash: keyed under its `chain_key_id` from version 3 on (UnknownKey when that
    key is not in the keyring)."""
    return _hash(prev_hash, chain_body(row), row.chain_version, row.chain_key_id, keys)


def _hash(prev_hash: str, body: str, version: int, key_id: str = "", keys: Keyring | None = None) -> str:
    if version >= KEYED_VERSION:
        return (keys or keyring()).mac(key_id, prev_hash + body)
    return _public_hash(prev_hash, body)


def _public_hash(prev_hash: str, body: str) -> str:
    """The unkeyed hash of versions 1 and 2: anyone can compute it."""
    return hashlib.sha256((prev_hash + body).encode()).hexdigest()


def _stored_sha256(name: str, data: bytes | None) -> str:
    if data is None:
        # Read before taking the chain lock: the lock is held for one small insert only.
        try:
            with storages["xray_images"].open(name, "rb") as handle:
                data = handle.read()
        except Exception as exc:  # noqa: BLE001 - the row still matters more than this hash
            logger.warning("cannot read back %s to hash it: %s; verify_audit will check it exists", name, exc)
            return ""
    return hashlib.sha256(data).hexdigest()


def chain_lock(using: str) -> None:
    """Serialises appenders until the end of the current transaction. On Postgres a transaction-
    scoped advisory lock (released by COMMIT or ROLLBACK, even if the worker dies). SQLite needs
    none: it has one write lock per database, and the settings begin every transaction with BEGIN
    IMMEDIATE, which takes it, so two appenders cannot both read the same last hash."""
    connection = connections[using]
    if connection.vendor == "postgresql":
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_ADVISORY_LOCK_KEY])


def prediction_create_chained(*, stored_data: bytes | None = None, **fields) -> Prediction:
    """Inserts one prediction row linked to the previous one. Takes Prediction's field names
    (model, image_url, results_json, image_sha256, file_name, user, source, latency_ms,
    heatmap_data or heatmaps) and the bytes stored under image_url (`stored_data`), whose sha256
    the chain covers; without them the stored file is read back to hash it."""
    for name in ("id", "pk", "created_at", "prev_hash", "chain_hash", "chain_version", "chain_key_id"):
        if name in fields:
            raise TypeError(f"prediction_create_chained sets {name} itself")
    if "stored_sha256" not in fields:
        fields["stored_sha256"] = _stored_sha256(fields.get("image_url", ""), stored_data)
    using = router.db_for_write(Prediction)
    keys = keyring()
    row = Prediction(chain_version=CHAIN_VERSION, chain_key_id=keys.signing_id, **fields)
    # The JSON fields are hashed as the database will return them.
    row.results_json = json.loads(json.dumps(row.results_json))
    row.heatmaps = json.loads(json.dumps(row.heatmaps))
    row.heatmap_data = bytes(row.heatmap_data or b"")
    with transaction.atomic(using=using):
        chain_lock(using)
        last = Prediction.objects.using(using).order_by("-id").values_list("id", "chain_hash").first()
        row.prev_hash = last[1] if last else ""
        row.created_at = timezone.now()
        row.chain_hash = compute_chain_hash(row.prev_hash, row, keys)
        row.save(using=using, force_insert=True)
        # An Idempotency-Key of the request that made this row commits with it, or neither does.
        key_bind_pending(row, using=using)
        version_name = getattr(fields.get("model"), "version_name", None) or str(row.model_id)
        transaction.on_commit(
            lambda: metrics.prediction_counted(version=version_name, source=row.source), using=using
        )
        # A checkpoint each time the ids pass a multiple of `every` (ids may skip, so not `== 0`).
        every = getattr(settings, "LUNGSITE_AUDIT_CHECKPOINT_EVERY", 1000)
        if every and row.pk // every > (last[0] if last else 0) // every:
            from audit.checkpoints import checkpoint_write

            head = {"last_id": row.pk, "head": row.chain_hash, "rows": None, "by": "append"}
            transaction.on_commit(lambda: checkpoint_write(head), using=using)
    return row


@dataclass(frozen=True)
class ChainBreak:
    id: int | None
    # "unchained", "link", "altered", "unkeyed", "unknown_key", "truncated", "checkpoint_forged", ...
    kind: str
    message: str

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "message": self.message}


def unchained_through_id(using: str = "default") -> int:
    """The last id that may lack a chain hash (rows from before the chain; audit.ChainGenesis)."""
    genesis = ChainGenesis.objects.using(using).order_by("id").values_list("unchained_through_id", flat=True)
    return max(genesis.first() or 0, 0)


def keyed_from_id(using: str = "default") -> int:
    """The first id that must be keyed (chain version 3): every row written after the keyed chain
    was installed (audit migration 0013 records it)."""
    genesis = ChainGenesis.objects.using(using).order_by("id").values_list("keyed_from_id", flat=True)
    found = genesis.first()
    return 1 if found is None else max(found, 1)


# What the walk reads of each row: the chain's fields, with the JSON fields as their stored text.
WalkedRow = namedtuple(
    "WalkedRow",
    [
        "id",
        "prev_hash",
        "chain_hash",
        "chain_version",
        "created_at",
        "model_id",
        "image_url",
        "image_sha256",
        "stored_sha256",
        "user_id",
        "source",
        "latency_ms",
        "heatmap_data",
        "file_name",
        "chain_key_id",
        "results_text",
        "heatmaps_text",
    ],
)
_WALK_FIELDS = WalkedRow._fields


def chain_walk(
    *, using: str = "default", after_id: int = 0, through_id: int | None = None, chunk_size: int = 1000
) -> Iterator[tuple[WalkedRow, ChainBreak | None]]:
    """Each row with id in (after_id, through_id], in id order, with the chain break found at it
    (or None). The rows are WalkedRow named tuples (`row.id`, `row.chain_hash`,
    `row.image_url`, ...). A row without a chain hash is a break unless ChainGenesis records it as
    written before the chain existed. A walk that starts after row `after_id` links its first row
    to that row's stored hash, so walks over consecutive ranges together check the whole chain.

    The rows are read in constant memory, without temp files (audit.streaming); the JSON fields
    as text, parsed once into canonical form (json_canonical)."""
    legacy_through = unchained_through_id(using)
    keyed_from = keyed_from_id(using)
    keys = keyring()
    rows = Prediction.objects.using(using).order_by("id")
    expected_prev = ""
    if after_id:
        previous = rows.filter(id__lte=after_id).order_by("-id").values_list("chain_hash", flat=True).first()
        expected_prev = previous or ""
        rows = rows.filter(id__gt=after_id)
    if through_id is not None:
        rows = rows.filter(id__lte=through_id)
    rows = rows.annotate(
        results_text=Cast("results_json", TextField()), heatmaps_text=Cast("heatmaps", TextField())
    ).values_list(*_WALK_FIELDS)
    with closing(rows_streamed(rows, chunk_size=chunk_size)) as streamed:
        yield from _walked(streamed, legacy_through, expected_prev, keyed_from, keys)


def _walked(
    streamed, legacy_through: int, expected_prev: str, keyed_from: int, keys: Keyring
) -> Iterator[tuple[WalkedRow, ChainBreak | None]]:
    keyed_seen = False
    for values in streamed:
        row = WalkedRow._make(values)
        problem = None
        if not row.chain_hash:
            if row.id > legacy_through or expected_prev:
                problem = ChainBreak(
                    row.id,
                    "unchained",
                    "row has no chain hash and is not recorded as written before the chain existed",
                )
        elif row.prev_hash != expected_prev:
            problem = ChainBreak(
                row.id,
                "link",
                "prev_hash does not match the chain hash of the row before it "
                f"(expected {expected_prev[:12] or 'empty'}, found {row.prev_hash[:12] or 'empty'}): "
                "a row before it was removed, inserted or altered",
            )
        elif row.chain_version < KEYED_VERSION and (keyed_seen or row.id >= keyed_from):
            problem = ChainBreak(
                row.id,
                "unkeyed",
                f"row of chain version {row.chain_version} (hashed without the audit key) where every row "
                "must be keyed: anyone allowed to INSERT could have written it",
            )
        else:
            keyed_seen = keyed_seen or row.chain_version >= KEYED_VERSION
            problem = _hash_problem(row, keys)
        # Follow the stored hashes so one break is reported once, not at every row after it.
        expected_prev = row.chain_hash
        yield row, problem


def _hash_problem(row: WalkedRow, keys: Keyring) -> ChainBreak | None:
    body = _body(_payload(row, json_canonical(row.results_text), json_canonical(row.heatmaps_text)))
    try:
        recomputed = _hash(row.prev_hash, body, row.chain_version, row.chain_key_id, keys)
    except UnknownKey:
        return ChainBreak(
            row.id,
            "unknown_key",
            f"the row is signed with audit key {row.chain_key_id or '(none)'}, which is not among the keys "
            "configured (LUNGSITE_AUDIT_KEY or LUNGSITE_AUDIT_KEY_FILE): it cannot be verified",
        )
    if hmac.compare_digest(recomputed, row.chain_hash):
        return None
    if row.chain_version >= KEYED_VERSION and _public_hash(row.prev_hash, body) == row.chain_hash:
        return ChainBreak(
            row.id,
            "unkeyed",
            "the row's hash was made with the public algorithm, not the audit key: it was written by "
            "someone without the key",
        )
    return ChainBreak(
        row.id,
        "altered",
        f"the row's fields no longer match its chain hash (stored {row.chain_hash[:12]}, "
        f"recomputed {recomputed[:12]}): changed after it was written, or not made with the audit key",
    )
