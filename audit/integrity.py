"""The hash chain of the prediction log: a removed, inserted or altered row is detectable.

Every row stores `prev_hash` (the chain hash of the row before it, by id; "" for the first row) and
`chain_hash` = sha256(prev_hash + canonical JSON of the row's immutable fields). The chain is
extended under a lock (a transaction-scoped advisory lock on Postgres; on SQLite the IMMEDIATE
transaction mode already serialises writers), so concurrent writers cannot fork it and id order is
chain order. `manage.py verify_audit` walks it.

The hash is computed before the insert (the log is append-only: the row cannot be updated after),
so it covers what the writer knows then: created_at is set here, not by the database, and the id
is left out (its place is given by the link to the previous row). On Postgres the insert and the
hash of prev_hash + body are one database function call (migration 0005), where body is the same
canonical JSON that Python hashes on SQLite and when the chain is verified.

A chain alone cannot reveal that the newest rows were cut off; record the head that verify_audit
prints somewhere else (a ticket, a log shipper) and pass it back with --expect-head.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass

from django.core.files.storage import storages
from django.db import connections, router, transaction
from django.db.models import TextField, Value
from django.utils import timezone

from audit.models import Prediction
from lungsite.queries import CompiledQuery, server_bound_cursor

logger = logging.getLogger(__name__)

CHAIN_VERSION = 1
# Any constant works; this one spells "lung" so a DBA reading pg_locks can tell whose it is.
_ADVISORY_LOCK_KEY = 0x6C756E67


def _canonical(value):
    """JSON values as every database gives them back: jsonb rewrites 1e+16 as 10000000000000000
    and loses -0.0, so integral floats become ints before hashing, on the way in and out alike."""
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return _canonical_float(value)
    if isinstance(value, dict):
        return {str(key): _canonical(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        # Lists of plain floats (the heatmaps: 13 x 7 x 7 values) take the float branch inline.
        return [_canonical_float(item) if type(item) is float else _canonical(item) for item in value]
    # numpy scalars and the like: hash what JSONField would have stored.
    return _canonical(json.loads(json.dumps(value, default=float)))


def _canonical_float(value: float):
    if not math.isfinite(value):
        raise ValueError(f"non-finite number {value!r} in an audit row")
    return int(value) if value.is_integer() else value


class EncodedMaps(dict):
    """{finding: rows of floats} that carries its own canonical JSON text (`canonical`: sorted keys,
    ASCII, no spaces, integral values as integers: what `chain_body` would write for it). Made by
    `encoded_maps`; the chain splices the text in instead of encoding 637 floats again, and on
    Postgres it is the inserted value. Not to be changed after it is made."""

    __slots__ = ("canonical",)


def encoded_maps(names, maps) -> EncodedMaps | None:
    """`maps` (K, h, w) float32, finite, rounded to 6 significant digits (`%.6g`, as
    float(f"{v:.6g}") rounds), as EncodedMaps keyed by `names`; None where the short way does not
    apply and the caller takes the long one.

    Each value is formatted once: the `%.6g` text of a float32 value already is its canonical JSON
    (the shortest repr of a 6-digit decimal is that decimal, and both switch to an exponent below
    1e-4 alike), except for -0 (the database keeps 0) and values of 1e6 and above (`%.6g` writes
    1e+06, canonical JSON 1000000), which take the long way, as do negative values (a map has none).
    Parsing the text back (one json.loads, integers as floats) gives exactly the floats
    float(f"{v:.6g}") gives, but for -0.0, which becomes 0.0."""
    import numpy as np

    if maps.dtype != np.float32 or maps.ndim != 3 or 0 in maps.shape or len(names) != len(maps):
        return None
    if not np.isfinite(maps).all() or (np.abs(maps) >= 999999.5).any() or (maps < 0).any():
        return None
    maps = maps + np.float32(0.0)  # -0.0 -> 0.0 (a ReLU may give either; the chain takes both as 0)
    texts = [
        "[[" + "],[".join([",".join(map("%.6g".__mod__, row)) for row in cam]) + "]]" for cam in maps.tolist()
    ]
    values = json.loads("[" + ",".join(texts) + "]", parse_int=float)
    encoded = EncodedMaps(zip(names, values, strict=True))
    by_name = dict(zip(names, texts, strict=True))  # a repeated name keeps its last map, as above
    encoded.canonical = (
        "{" + ",".join(f"{json.dumps(str(name))}:{text}" for name, text in sorted(by_name.items())) + "}"
    )
    return encoded


def _as_stored_maps(heatmaps):
    """`heatmaps` as JSON gives it back. The usual value, {name: rows of Python floats}
    (audit.services.heatmaps_json), already is, and is returned as it is: checking costs a tenth
    of the dumps/loads round trip that anything else goes through."""
    if type(heatmaps) is EncodedMaps:
        return heatmaps
    if type(heatmaps) is dict and all(
        type(name) is str
        and type(rows) is list
        and all(type(row) is list and all(type(v) is float and math.isfinite(v) for v in row) for row in rows)
        for name, rows in heatmaps.items()
    ):
        return heatmaps
    return json.loads(json.dumps(heatmaps))


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="microseconds")


def chain_payload(row: Prediction) -> dict:
    """The fields the chain covers (everything a reader of the log relies on, minus the id)."""
    return {
        "v": CHAIN_VERSION,
        "created_at": _iso(row.created_at),
        "model_id": row.model_id,
        "image_url": row.image_url,
        "image_sha256": row.image_sha256,
        "stored_sha256": row.stored_sha256,
        "user_id": row.user_id,
        "source": row.source,
        "latency_ms": _canonical(row.latency_ms),
        "results_json": _canonical(row.results_json),
        "heatmaps": _canonical(row.heatmaps),
    }


_MAPS_SLOT = "\x00lungsite-heatmaps\x00"


def chain_body(row: Prediction) -> str:
    """The row's canonical JSON (ASCII only): what the chain hashes after the previous row's hash."""
    maps = row.heatmaps
    if type(maps) is EncodedMaps:
        # The maps' text is canonical already: the rest of the row is encoded around a placeholder.
        row.heatmaps = _MAPS_SLOT
        try:
            body = json.dumps(chain_payload(row), sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        finally:
            row.heatmaps = maps
        slot = json.dumps(_MAPS_SLOT)
        if body.count(slot) == 1:  # else the placeholder's text is inside another field: no shortcut
            return body.replace(slot, maps.canonical)
    return json.dumps(chain_payload(row), sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def compute_chain_hash(prev_hash: str, row: Prediction) -> str:
    return hashlib.sha256((prev_hash + chain_body(row)).encode()).hexdigest()


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


# Postgres: audit migration 0005's function takes the advisory lock _ADVISORY_LOCK_KEY, reads the
# last chain_hash, hashes prev_hash + body with the database's sha256 and inserts, all in one round
# trip (five as separate statements: begin, lock, read, insert, commit).
_APPEND_SQL = (
    "SELECT id, prev_hash, chain_hash FROM lungsite_chain_append("
    "%s, %s::timestamptz, %s::bigint, %s, %s::jsonb, %s, %s::bigint, %s, %s::double precision, %s::jsonb, %s)"
)


# SQLite: the last row's chain_hash, its SQL compiled once (lungsite.queries).
_LAST_HASH = CompiledQuery(
    lambda: Prediction.objects.order_by("-id").values_list("chain_hash", flat=True)[:1]
)


def _append_postgres(row: Prediction, using: str) -> None:
    with server_bound_cursor(using) as cursor:
        cursor.execute(
            _APPEND_SQL,
            [
                chain_body(row),
                row.created_at,
                row.model_id,
                row.image_url,
                json.dumps(row.results_json),
                row.image_sha256,
                row.user_id,
                row.source,
                row.latency_ms,
                row.heatmaps.canonical if type(row.heatmaps) is EncodedMaps else json.dumps(row.heatmaps),
                row.stored_sha256,
            ],
        )
        row.pk, row.prev_hash, row.chain_hash = cursor.fetchone()
    row._state.adding = False
    row._state.db = using


def prediction_create_chained(*, stored_data: bytes | None = None, **fields) -> Prediction:
    """Inserts one prediction row linked to the previous one. Takes Prediction's field names
    (model, image_url, results_json, image_sha256, user, source, latency_ms, heatmaps) and the
    bytes stored under image_url (`stored_data`), whose sha256 the chain covers; without them the
    stored file is read back to hash it.

    On Postgres one call of the `lungsite_chain_append` function does the chained insert under the
    chain's advisory lock. created_at is read just before it; two writers racing for the lock may
    therefore get ids in the other order than their created_at, by the time one waited (the chain
    follows ids). On SQLite the transaction begins with BEGIN IMMEDIATE (settings), which already
    holds the database's single write lock, and the steps run as statements within it."""
    for name in ("id", "pk", "created_at", "prev_hash", "chain_hash"):
        if name in fields:
            raise TypeError(f"prediction_create_chained sets {name} itself")
    if "stored_sha256" not in fields:
        fields["stored_sha256"] = _stored_sha256(fields.get("image_url", ""), stored_data)
    using = router.db_for_write(Prediction)
    row = Prediction(**fields)
    # The JSON fields are hashed as the database will return them.
    row.results_json = json.loads(json.dumps(row.results_json))
    row.heatmaps = _as_stored_maps(row.heatmaps)
    if connections[using].vendor == "postgresql":
        row.created_at = timezone.now()
        _append_postgres(row, using)
        return row
    with transaction.atomic(using=using):
        last = _LAST_HASH.first_row(using=using)
        row.prev_hash = (last[0] if last else None) or ""
        row.created_at = timezone.now()
        row.chain_hash = compute_chain_hash(row.prev_hash, row)
        # raw=True keeps the created_at set above: auto_now_add would overwrite it with a later
        # clock reading and the hash would not match what is stored.
        maps = row.heatmaps
        if type(maps) is EncodedMaps:  # its text is valid JSON already: no second encoding
            row.heatmaps = Value(maps.canonical, output_field=TextField())
        try:
            row.save_base(using=using, raw=True, force_insert=True)
        finally:
            row.heatmaps = maps
    return row


@dataclass(frozen=True)
class ChainBreak:
    id: int | None
    kind: str  # "unchained", "link", "altered", "truncated"
    message: str

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "message": self.message}


def chain_walk(
    *, using: str = "default", chunk_size: int = 1000
) -> Iterator[tuple[Prediction, ChainBreak | None]]:
    """Each row in id order with the chain break found at it (or None). Rows written before the
    chain existed (empty hashes) are accepted only before the first chained row."""
    expected_prev = ""
    started = False
    for row in Prediction.objects.using(using).order_by("id").iterator(chunk_size=chunk_size):
        problem = None
        if not row.chain_hash:
            if started:
                problem = ChainBreak(row.pk, "unchained", "row has no chain hash but follows chained rows")
        else:
            if row.prev_hash != expected_prev:
                problem = ChainBreak(
                    row.pk,
                    "link",
                    "prev_hash does not match the chain hash of the row before it "
                    f"(expected {expected_prev[:12] or 'empty'}, found {row.prev_hash[:12] or 'empty'}): "
                    "a row before it was removed, inserted or altered",
                )
            else:
                recomputed = compute_chain_hash(row.prev_hash, row)
                if recomputed != row.chain_hash:
                    problem = ChainBreak(
                        row.pk,
                        "altered",
                        f"the row's fields no longer match its chain hash (stored {row.chain_hash[:12]}, "
                        f"recomputed {recomputed[:12]})",
                    )
            started = True
        # Follow the stored hashes so one break is reported once, not at every row after it.
        expected_prev = row.chain_hash
        yield row, problem
