"""The per-process cache of loaded models, keyed by the active row's (id, sha256).

Every call reads the active row (one indexed query, through the ORM). When its key differs from the
cached one the new version loads under a lock (its stored ONNX serving graph, verified and opened
in ONNX Runtime; no torch) and becomes current; requests already running keep the object they were
given. The previous version stays loaded (two entries, least recently used dropped), so switching
back costs no load. No signals: every worker of every host sees an activation on its next request.

When the active version cannot be served, the last good one serves in its place, and callers are
told which version did: a version that failed to load is tried again after a short backoff
(RETRY_FIRST_S, doubling up to RETRY_MAX_S), so a worker recovers within seconds once storage is
back; a version whose outputs were not finite numbers (`model_withdraw`) is not served again by
this process until its row changes (new weights or serving graph, or a new activation: someone
fixed it or decided to try it again). `serving_state` says which, for /healthz.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from common.errors import NoActiveModel
from engine.serving import FEATURES, ServingRuntime
from registry.models import ModelVersion

logger = logging.getLogger(__name__)

MAX_ENTRIES = 2
RETRY_FIRST_S = 2.0
RETRY_MAX_S = 30.0


@dataclass(frozen=True)
class ServingModel:
    version: ModelVersion  # the version that actually serves (may differ from the active row)
    model: ServingRuntime


@dataclass
class _Failure:
    reason: str
    at: float  # time.monotonic() of the last attempt
    attempts: int = 1
    final: bool = False  # withdrawn for its outputs: not retried while the row stays the same
    fingerprint: tuple = ()  # the row's serving graph and activation time when it was withdrawn

    def retry_due(self, row: ModelVersion | None = None) -> bool:
        if self.final:
            return row is not None and _fingerprint(row) != self.fingerprint
        delay = min(RETRY_FIRST_S * 2 ** (self.attempts - 1), RETRY_MAX_S)
        return time.monotonic() - self.at >= delay


_lock = threading.Lock()
_entries: OrderedDict[tuple[int, str], ServingModel] = OrderedDict()
_current: ServingModel | None = None  # last good model, the one that served most recently
_failed: dict[tuple[int, str], _Failure] = {}


def _load(version: ModelVersion) -> ServingModel:
    input_size = int((version.preprocessing or {}).get("input_size", 224))
    if version.serving_graph_sha256:
        # The graph exported at registration (engine.export), verified against its recorded
        # sha256 and opened in ONNX Runtime: no torch in this process.
        from registry.storage import WeightsIntegrityError, serving_graph_read

        try:
            graph = serving_graph_read(version)
        except WeightsIntegrityError as exc:
            logger.error("%s; serving %s from its weights instead", exc, version.version_name)
        else:
            runtime = ServingRuntime.from_graph(graph, input_size)
            if FEATURES in {output.name for output in runtime.session.get_outputs()}:
                return ServingModel(version=version, model=runtime)
            logger.info("the stored graph of %s predates the pooled features: exporting it again", version)
    # No stored graph (registered before graphs were stored), a damaged one, or one stored before
    # graphs gave the pooled features: export it again from the verified weights, in a child
    # process when this one has no torch.
    from engine.weights import serving_graph_from_weights
    from registry.storage import weights_read

    graph = serving_graph_from_weights(
        weights_read(version),
        architecture=version.architecture,
        num_classes=len(version.class_names),
        input_size=input_size,
        preprocessing=version.preprocessing,
    )
    return ServingModel(version=version, model=ServingRuntime.from_graph(graph, input_size))


def serving_model_load(version: ModelVersion) -> ServingModel:
    """`version`'s network loaded as serving loads it (its verified serving graph in ONNX Runtime),
    outside the cache: for evaluations, which must score what serving would."""
    return _load(version)


def _fingerprint(version: ModelVersion) -> tuple:
    return (version.serving_graph_sha256, version.activated_at)


def get_active() -> ServingModel:
    """The model that serves now, with the active row as read by this call. Raises NoActiveModel
    when there is nothing to serve."""
    # The whole row is small and read fresh, so edits to thresholds or notes show at once; the
    # loaded network is keyed by (id, sha256) because only new weights need a new load.
    row = ModelVersion.objects.filter(is_active=True).first()
    if row is None:
        raise NoActiveModel("No model version is active. Register one and activate it.")
    key = (row.pk, row.sha256)

    entry = _entries.get(key)
    if entry is None:
        entry = _load_or_fallback(key, row)
    elif _current is not entry:
        with _lock:
            _remember(key, entry)
    if entry.version.pk != row.pk:  # the last good version serves in place of a broken one
        return entry
    return ServingModel(version=row, model=entry.model)


def _load_or_fallback(key: tuple[int, str], row: ModelVersion) -> ServingModel:
    with _lock:
        entry = _entries.get(key)  # another thread may have loaded it while this one waited
        if entry is not None:
            _remember(key, entry)
            return entry
        failure = _failed.get(key)
        if failure is None or failure.retry_due(row):
            try:
                entry = _load(row)
            except Exception as exc:  # noqa: BLE001 - any failure means "keep the last good one"
                attempts = failure.attempts + 1 if failure and not failure.final else 1
                _failed[key] = _Failure(reason=str(exc), at=time.monotonic(), attempts=attempts)
                logger.error(
                    "cannot load active model version %s (id=%s, sha256=%s): %s; %s",
                    row.version_name,
                    row.pk,
                    row.short_sha256,
                    exc,
                    f"still serving {_current.version.version_name}" if _current else "nothing to serve",
                )
            else:
                _failed.pop(key, None)
                _remember(key, entry)
                logger.info("serving model version %s (%s)", row.version_name, row.short_sha256)
                return entry
        if _current is not None:
            return _current
        failure = _failed[key]
        state = "was withdrawn from serving" if failure.final else "cannot be loaded"
        raise NoActiveModel(f"The active model version {state}: {failure.reason}")


def _remember(key: tuple[int, str], entry: ServingModel) -> None:
    """Makes `entry` current and most recently used. Call with _lock held."""
    global _current
    _entries[key] = entry
    _entries.move_to_end(key)
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    _current = entry


def model_withdraw(serving: ServingModel, reason: str) -> None:
    """Stops serving `serving`'s version in this process (its outputs were not finite numbers):
    the most recently used other loaded version, if any, serves in its place from the next call.
    Its load is not retried; `clear()` forgets the withdrawal."""
    global _current
    version = serving.version
    key = (version.pk, version.sha256)
    with _lock:
        _entries.pop(key, None)
        _failed[key] = _Failure(
            reason=reason, at=time.monotonic(), final=True, fingerprint=_fingerprint(version)
        )
        if _current is not None and _current.version.pk == version.pk:
            _current = _entries[next(reversed(_entries))] if _entries else None
    logger.error(
        "withdrew model version %s (id=%s, sha256=%s) from serving: %s; %s",
        version.version_name,
        version.pk,
        version.short_sha256,
        reason,
        f"now serving {_current.version.version_name}" if _current else "nothing left to serve",
    )


def serving_state() -> dict:
    """What this process serves, for /healthz: {"state": "ok" | "withdrawn" | "failed" |
    "not_loaded", "serving": version name or None, "reason": why the active version does not serve}.
    Reads the active row (one query) and nothing else: it loads nothing."""
    row = ModelVersion.objects.filter(is_active=True).only("pk", "sha256", "version_name").first()
    with _lock:
        serving = _current.version.version_name if _current is not None else None
        if row is None:
            return {"state": "none_active", "serving": serving, "reason": None}
        key = (row.pk, row.sha256)
        failure = _failed.get(key)
        if failure is not None:
            state = "withdrawn" if failure.final else "failed"
            return {"state": state, "serving": serving, "reason": failure.reason}
        if key in _entries:
            return {"state": "ok", "serving": row.version_name, "reason": None}
    return {"state": "not_loaded", "serving": serving, "reason": None}


def clear(*, keep_loaded: bool = False) -> None:
    """Forget the serving state: which version serves and which loads failed, and unless
    `keep_loaded`, the loaded networks too (tests; a process that wants its memory back). Loaded
    networks are keyed by (id, sha256), so keeping them never serves other weights."""
    global _current
    with _lock:
        if not keep_loaded:
            _entries.clear()
        _failed.clear()
        _current = None


def loaded_keys() -> list[tuple[int, str]]:
    """(id, sha256) of the loaded versions, least recently used first."""
    with _lock:
        return list(_entries)
