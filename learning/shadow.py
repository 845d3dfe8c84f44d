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
    """Scores the image with the shadow version and stores the outputs (idempotent per prediction)."""
    from engine.pipeline import predict, preprocess
    from registry.models import DEFAULT_PREPROCESSING

    version = ModelVersion.objects.get(pk=version_id)
    started = time.perf_counter()
    output = predict(_model_for(version), preprocess(image, version.preprocessing or DEFAULT_PREPROCESSING))
    probabilities = {
        name: round(float(p), 6) for name, p in zip(version.class_names, output.probabilities, strict=True)
    }
    shadow, _ = ShadowPrediction.objects.get_or_create(
        prediction_id=prediction_id,
        version=version,
        defaults={"probabilities": probabilities, "latency_ms": (time.perf_counter() - started) * 1000},
    )
    return shadow


def shadow_comparison(*, version: ModelVersion) -> dict:
    """Shadow `version` against the versions that served the same predictions: per finding, how often
    both call it the same (positive at their own thresholds), and the AUROC of each on the
    predictions that have a feedback label for it (present 1, absent 0; unsure left out)."""
    from audit.label_selectors import finding_labels_by_prediction
    from learning.evaluation import per_class_auroc

    rows = list(ShadowPrediction.objects.filter(version=version).select_related("prediction"))
    labels_of = finding_labels_by_prediction([row.prediction_id for row in rows])
    names = list(version.class_names)
    agree = dict.fromkeys(names, 0)
    compared = dict.fromkeys(names, 0)
    labels = np.full((len(rows), len(names)), np.nan)
    live_scores = np.full((len(rows), len(names)), np.nan)
    shadow_scores = np.full((len(rows), len(names)), np.nan)
    for i, row in enumerate(rows):
        live = {f["name"]: f for f in (row.prediction.results_json or {}).get("findings", [])}
        marks = labels_of.get(row.prediction_id, {})
        for k, name in enumerate(names):
            if name not in live or name not in row.probabilities:
                continue
            shadow_p = row.probabilities[name]
            compared[name] += 1
            agree[name] += int(bool(live[name]["positive"]) == (shadow_p >= version.threshold_for(name)))
            live_scores[i, k], shadow_scores[i, k] = live[name]["probability"], shadow_p
            value = {"present": 1.0, "absent": 0.0}.get(marks.get(name))
            if value is not None:
                labels[i, k] = value
    usable = ~np.isnan(live_scores)
    labels = np.where(usable, labels, np.nan)
    live_auroc = per_class_auroc(labels, np.nan_to_num(live_scores), names)
    shadow_auroc = per_class_auroc(labels, np.nan_to_num(shadow_scores), names)
    return {
        "version": version,
        "n_predictions": len(rows),
        "findings": [
            {
                "name": name,
                "compared": compared[name],
                "agreement": agree[name] / compared[name] if compared[name] else None,
                "live_auroc": live_auroc[name]["auroc"],
                "shadow_auroc": shadow_auroc[name]["auroc"],
                "positives": live_auroc[name]["positives"],
                "negatives": live_auroc[name]["negatives"],
            }
            for name in names
        ],
    }
