"""The per-process cache of loaded models, keyed by the active row's (id, sha256).

Every call reads the active row's key (one indexed query). When it differs from the cached key the
new version loads under a lock (its stored ONNX serving graph, verified and opened in ONNX Runtime;
no torch) and becomes current; requests already running keep the object they were given. The
previous version stays loaded (two entries, least recently used dropped), so switching back costs
no load. A version that fails to load is logged and remembered for
RETRY_FAILED_AFTER_S; meanwhile the last good version keeps serving and is what callers are told
served. No signals: every worker of every host sees an activation on its next request.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lungsite.queries import CompiledQuery
from registry.models import ModelVersion

if TYPE_CHECKING:
    from torch import nn

    from inference.serving import ServingRuntime

logger = logging.getLogger(__name__)

MAX_ENTRIES = 2
RETRY_FAILED_AFTER_S = 30.0


# The active row: one indexed query (the partial unique index on is_active), its SQL compiled once
# (lungsite.queries; 0.15 ms a call instead of 0.5-0.7 through the ORM).
_ACTIVE_ROW = CompiledQuery(lambda: ModelVersion.objects.filter(is_active=True).order_by("pk")[:1])


class NoActiveModel(Exception):
    """No version is active, or none that is active or was active could be loaded."""


@dataclass(frozen=True)
class ServingModel:
    version: ModelVersion  # the version that actually serves (may differ from the active row)
    model: ServingRuntime | nn.Module  # nn.Module only for a network with no serving graph


_lock = threading.Lock()
_entries: OrderedDict[tuple[int, str], ServingModel] = OrderedDict()
_current: ServingModel | None = None  # last good model that served the active key
_failed: dict[tuple[int, str], tuple[float, str]] = {}  # key -> (monotonic time, reason)
_threads_set = False
_last_row: tuple[tuple, ModelVersion] | None = None  # (the active row's columns, its instance)


def _configure_torch_threads() -> None:
    global _threads_set
    if _threads_set:
        return
    _threads_set = True
    if os.environ.get("LUNGSITE_TORCH_THREADS", "").strip():
        import torch

        from inference.serving import threads_from_environment

        torch.set_num_threads(threads_from_environment())


def _load(version: ModelVersion) -> ServingModel:
    from inference.serving import ServingRuntime

    input_size = int((version.preprocessing or {}).get("input_size", 224))
    if version.serving_graph_sha256:
        # The graph written at registration (inference.export), verified against its recorded
        # sha256 and opened in ONNX Runtime: no torch in this process.
        from registry.storage import WeightsIntegrityError, serving_graph_read

        try:
            graph = serving_graph_read(version)
        except WeightsIntegrityError as exc:
            logger.error("%s; serving %s from its weights instead", exc, version.version_name)
        else:
            return ServingModel(version=version, model=ServingRuntime.from_graph(graph, input_size))
    # No stored graph, or a damaged one: write it again from the verified weights (in a child
    # process when this one has no torch, so a serving worker stays torch-free), or, for a network
    # the writer cannot describe, load the module in torch and run it here.
    from inference.weights import load_model, serving_graph_from_weights
    from registry.storage import weights_read

    data = weights_read(version)
    num_classes = len(version.class_names)
    graph = serving_graph_from_weights(
        data, architecture=version.architecture, num_classes=num_classes, input_size=input_size
    )
    if graph is not None:
        return ServingModel(version=version, model=ServingRuntime.from_graph(graph, input_size))
    _configure_torch_threads()
    model = load_model(data, architecture=version.architecture, num_classes=num_classes)
    return ServingModel(version=version, model=model)


def get_active() -> ServingModel:
    """The model that serves now, with the active row as read by this call. Raises NoActiveModel
    when there is nothing to serve."""
    # The whole row is small and read fresh, so edits to thresholds or notes show at once; the
    # loaded network is keyed by (id, sha256) because only new weights need a new load.
    row = _active_row()
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


def _active_row() -> ModelVersion | None:
    """The active row, read now (one query). When every column holds what the previous call read,
    the ModelVersion built then is returned again: building one costs more than the query (JSON
    fields, time zones, Model.from_db), and callers only read it."""
    global _last_row
    values = _ACTIVE_ROW.first_row()
    if values is None:
        return None
    last = _last_row
    if last is not None and last[0] == values:
        return last[1]
    row = _ACTIVE_ROW.instance(values)
    _last_row = (values, row)
    return row


def _load_or_fallback(key: tuple[int, str], row: ModelVersion) -> ServingModel:
    with _lock:
        entry = _entries.get(key)  # another thread may have loaded it while this one waited
        if entry is not None:
            _remember(key, entry)
            return entry
        failed = _failed.get(key)
        if failed is None or time.monotonic() - failed[0] >= RETRY_FAILED_AFTER_S:
            try:
                entry = _load(row)
            except Exception as exc:  # noqa: BLE001 - any failure means "keep the last good one"
                _failed[key] = (time.monotonic(), str(exc))
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
        reason = _failed.get(key, (0, "unknown error"))[1]
        raise NoActiveModel(f"The active model version cannot be loaded: {reason}")


def _remember(key: tuple[int, str], entry: ServingModel) -> None:
    """Makes `entry` current and most recently used. Call with _lock held."""
    global _current
    _entries[key] = entry
    _entries.move_to_end(key)
    while len(_entries) > MAX_ENTRIES:
        _entries.popitem(last=False)
    _current = entry


def clear(*, keep_loaded: bool = False) -> None:
    """Forget the serving state: which version serves and which loads failed, and unless
    `keep_loaded`, the loaded networks too (tests; a process that wants its memory back). Loaded
    networks are keyed by (id, sha256), so keeping them never serves other weights."""
    global _current, _last_row
    with _lock:
        if not keep_loaded:
            _entries.clear()
        _failed.clear()
        _current = None
        _last_row = None


def loaded_keys() -> list[tuple[int, str]]:
    """(id, sha256) of the loaded versions, least recently used first."""
    with _lock:
        return list(_entries)
