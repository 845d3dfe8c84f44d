"""Shadow mode: one inactive version (ModelVersion.is_shadow) also scores live predictions, off the
request's critical path, at most LUNGSITE_SHADOW_RATE of them. Its outputs go to ShadowPrediction,
apart from the audit row, and are never shown to clinicians; `shadow_comparison` compares it with
the version that served (agreement per finding, AUROC of each on the feedback-labelled predictions).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import close_old_connections, transaction

from learning.models import ShadowPrediction
from registry.models import ModelVersion

if TYPE_CHECKING:
    from audit.models import Prediction

logger = logging.getLogger(__name__)

# One thread: the shadow must never compete with live requests for more than a core's share, and a
# backlog beyond MAX_QUEUED is dropped (counted in the log) rather than queued without bound.
MAX_QUEUED = 8
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()
_queued = 0
_loaded: dict[tuple[int, str], object] = {}


class ShadowError(Exception):
    """A version that cannot be the shadow; the message says why."""


def shadow_version_get() -> ModelVersion | None:
    return ModelVersion.objects.filter(is_shadow=True).first()


def shadow_version_set(*, version: ModelVersion | None) -> ModelVersion | None:
    """Makes `version` the one shadow (None: no shadow). The active version cannot be its own shadow."""
    with transaction.atomic():
        if version is not None:
            version = ModelVersion.objects.select_for_update().get(pk=version.pk)
            if version.is_active:
                raise ShadowError(f"{version.version_name} is the active version; a shadow must be inactive.")
        ModelVersion.objects.filter(is_shadow=True).exclude(pk=getattr(version, "pk", None)).update(
            is_shadow=False
        )
        if version is not None and not version.is_shadow:
            version.is_shadow = True
            version.save(update_fields=["is_shadow"])
    return version


def _executor() -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lungsite-shadow")
        return _pool


def shadow_submit(*, prediction: Prediction, image: np.ndarray) -> Future | None:
    """Hands the decoded image of a logged prediction to the shadow thread, if a shadow is set and
    this prediction falls within LUNGSITE_SHADOW_RATE. Never raises: the live result is already
    logged and returned whatever happens here."""
    global _queued
    try:
        rate = float(getattr(settings, "LUNGSITE_SHADOW_RATE", 1.0))
        if rate <= 0 or random.random() >= rate:
            return None
        shadow = shadow_version_get()
        if shadow is None or shadow.pk == prediction.model_id:
            return None
        with _pool_lock:
            if _queued >= MAX_QUEUED:
                logger.warning("shadow backlog full: prediction %s not scored by the shadow", prediction.pk)
                return None
            _queued += 1
        return _executor().submit(_run_in_thread, prediction.pk, shadow.pk, image)
    except Exception:  # noqa: BLE001 - the shadow must never fail a live prediction
        logger.exception("could not hand prediction %s to the shadow", getattr(prediction, "pk", None))
        return None


def _run_in_thread(prediction_id: int, version_id: int, image: np.ndarray) -> ShadowPrediction | None:
    global _queued
    try:
        return shadow_run(prediction_id=prediction_id, version_id=version_id, image=image)
    except Exception:  # noqa: BLE001 - logged; the next prediction tries again
        logger.exception("shadow scoring of prediction %s failed", prediction_id)
        return None
    finally:
        with _pool_lock:
            _queued -= 1
        close_old_connections()


def _model_for(version: ModelVersion):
    """The shadow's network, loaded once per (id, sha256) the way the cache loads the active one:
    its verified serving graph in ONNX Runtime (no torch), else the torch module."""
    key = (version.pk, version.sha256)
    model = _loaded.get(key)
    if model is None:
        from engine.serving import ServingRuntime
        from registry.storage import serving_graph_read, weights_read

        size = int((version.preprocessing or {}).get("input_size", 224))
        if version.serving_graph_sha256:
            model = ServingRuntime.from_graph(serving_graph_read(version), size)
        else:
            from engine.weights import load_model

            model = load_model(
                weights_read(version), architecture=version.architecture, num_classes=len(version.class_names)
            )
        _loaded.clear()  # one shadow at a time
        _loaded[key] = model
    return model


def shadow_run(*, prediction_id: int, version_id: int, image: np.ndarray) -> ShadowPrediction:
    """Scores the image with the shadow version, its calibration applied as serving would, and
    stores the outputs (idempotent per prediction)."""
    from engine.pipeline import predict, preprocess
    from learning.calibration import calibration_apply
    from registry.models import DEFAULT_PREPROCESSING

    version = ModelVersion.objects.get(pk=version_id)
    started = time.perf_counter()
    output = predict(_model_for(version), preprocess(image, version.preprocessing or DEFAULT_PREPROCESSING))
    served, _ = calibration_apply(version.calibration, version.class_names, output.probabilities)
    probabilities = {name: round(float(p), 6) for name, p in zip(version.class_names, served, strict=True)}
    shadow, _ = ShadowPrediction.objects.get_or_create(
        prediction_id=prediction_id,
        version=version,
        defaults={"probabilities": probabilities, "latency_ms": (time.perf_counter() - started) * 1000},
    )
    return shadow


def _latency(values: list[float]) -> dict:
    values = [v for v in values if v is not None]
    if not values:
        return {"n": 0, "median_ms": None, "p95_ms": None}
    return {
        "n": len(values),
        "median_ms": round(float(np.median(values)), 1),
        "p95_ms": round(float(np.percentile(values, 95)), 1),
    }


def shadow_comparison(*, version: ModelVersion) -> dict:
    """Shadow `version` against the versions that served the same predictions, per finding: how
    many predictions both scored; how often both call it the same (positive at their own
    thresholds) with its Wilson interval; Cohen's kappa of the two calls with a bootstrap interval
    (resampling predictions); the AUROC of each, with intervals, on the predictions that have a
    present/absent feedback mark for it (not evaluable below LUNGSITE_EVAL_MIN_POSITIVES); and the
    latency of each (median and 95th percentile, ms)."""
    from audit.label_selectors import finding_labels_by_prediction
    from learning.intervals import (
        auroc_intervals,
        bootstrap_weights,
        percentile_interval,
        proportion_interval,
        weighted_kappa,
    )

    rows = list(ShadowPrediction.objects.filter(version=version).select_related("prediction"))
    labels_of = finding_labels_by_prediction([row.prediction_id for row in rows])
    names = list(version.class_names)
    n = len(rows)
    labels = np.full((n, len(names)), np.nan)
    live_scores = np.full((n, len(names)), np.nan)
    shadow_scores = np.full((n, len(names)), np.nan)
    live_calls = np.zeros((n, len(names)), dtype=bool)
    shadow_calls = np.zeros((n, len(names)), dtype=bool)
    for i, row in enumerate(rows):
        live = {f["name"]: f for f in (row.prediction.results_json or {}).get("findings", [])}
        marks = labels_of.get(row.prediction_id, {})
        for k, name in enumerate(names):
            if name not in live or name not in row.probabilities:
                continue
            live_scores[i, k], shadow_scores[i, k] = live[name]["probability"], row.probabilities[name]
            live_calls[i, k] = bool(live[name]["positive"])
            shadow_calls[i, k] = row.probabilities[name] >= version.threshold_for(name)
            value = {"present": 1.0, "absent": 0.0}.get(marks.get(name))
            if value is not None:
                labels[i, k] = value
    usable = ~np.isnan(live_scores)
    labels = np.where(usable, labels, np.nan)
    rounds = int(getattr(settings, "LUNGSITE_BOOTSTRAP_ROUNDS", 1000))
    minimum = int(getattr(settings, "LUNGSITE_EVAL_MIN_POSITIVES", 10))
    weights = (
        bootstrap_weights([str(row.prediction_id) for row in rows], rounds=rounds, seed=0) if n else None
    )
    if n:
        live_auroc, live_mean = auroc_intervals(
            labels, np.nan_to_num(live_scores), names, weights=weights, min_positives=minimum
        )
        shadow_auroc, shadow_mean = auroc_intervals(
            labels, np.nan_to_num(shadow_scores), names, weights=weights, min_positives=minimum
        )
    findings = []
    for k, name in enumerate(names):
        compared = int(usable[:, k].sum())
        entry = {"name": name, "compared": compared, "agreement": None, "agreement_ci": None}
        entry |= {"kappa": None, "kappa_ci": None}
        if compared:
            both = usable[:, k]
            agree = int((live_calls[both, k] == shadow_calls[both, k]).sum())
            kappa_rounds = weighted_kappa(live_calls[both, k], shadow_calls[both, k], weights[:, both])
            kappa = float(
                weighted_kappa(live_calls[both, k], shadow_calls[both, k], np.ones((1, compared)))[0]
            )
            entry |= {
                "agreement": round(agree / compared, 4),
                "agreement_ci": proportion_interval(agree, compared),
                "kappa": None if np.isnan(kappa) else round(kappa, 4),
                "kappa_ci": percentile_interval(kappa_rounds),
            }
        live_entry = live_auroc[name] if n else {"auroc": None, "ci": None, "positives": 0, "negatives": 0}
        shadow_entry = shadow_auroc[name] if n else {"auroc": None, "ci": None}
        entry |= {
            "live_auroc": live_entry["auroc"],
            "live_auroc_ci": live_entry["ci"],
            "shadow_auroc": shadow_entry["auroc"],
            "shadow_auroc_ci": shadow_entry["ci"],
            "positives": live_entry["positives"],
            "negatives": live_entry["negatives"],
            "evaluable": bool(live_entry.get("evaluable")),
        }
        findings.append(entry)
    return {
        "version": version,
        "n_predictions": n,
        "min_positives": minimum,
        "live_mean_auroc": live_mean if n else None,
        "shadow_mean_auroc": shadow_mean if n else None,
        "latency": {
            "shadow": _latency([row.latency_ms for row in rows]),
            "live": _latency([row.prediction.latency_ms for row in rows]),
        },
        "findings": findings,
    }
