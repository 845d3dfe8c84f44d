"""Writes of measured evaluations: `model_version_evaluation_record` stores one (the Evaluation row
with its intervals, calibration, subgroups, out-of-distribution reference and the outputs behind
them, and, for a held-out evaluation, the version's latest-evaluation fields);
`model_version_calibration_store` stores a fitted calibration with the version. The activation gate
that reads them lives with activation (registry.gate)."""

from __future__ import annotations

import hashlib
import logging
from typing import TYPE_CHECKING

import numpy as np
from django.conf import settings
from django.db import transaction
from django.utils import timezone

from learning.calibration import calibration_apply, threshold_map
from learning.evaluation import evaluation_compute
from learning.intervals import operating_point
from learning.ood import OodError, ood_reference_bytes, ood_reference_fit
from registry.models import Evaluation, ModelVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from learning.labels import LabelTable

logger = logging.getLogger(__name__)


def _none_for_nan(rows: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in rows]


def _patient_key(patient: str) -> str:
    # Patient ids group images for resampling; only their grouping is kept, not the ids.
    return hashlib.sha256(str(patient).encode()).hexdigest()[:16]


def _operating_points(version: ModelVersion, labels: np.ndarray, scores: np.ndarray) -> dict:
    """Sensitivity and specificity of the version's own thresholds on this set, per finding."""
    result = {}
    for k, name in enumerate(version.class_names):
        known = ~np.isnan(labels[:, k])
        y, s = labels[known, k], scores[known, k]
        if (y == 1).any() and (y == 0).any():
            result[name] = {
                "threshold": version.threshold_for(name),
                **operating_point(y, s, version.threshold_for(name)),
            }
    return result


def _ood(features: np.ndarray | None, table: LabelTable, kind: str) -> tuple[bytes, float | None, dict]:
    if features is None or not len(features):
        return b"", None, {"reason": "no features were recorded for these images"}
    if kind != Evaluation.HELD_OUT:
        return b"", None, {"reason": "not a held-out evaluation: no reference is kept"}
    quantile = float(settings.LUNGSITE_OOD_QUANTILE)
    try:
        reference, held_out = ood_reference_fit(features, table.patients, quantile=quantile)
    except OodError as exc:
        return b"", None, {"reason": str(exc)}
    summary = {
        "threshold": round(reference.threshold, 4),
        "quantile": quantile,
        "reference_images": reference.n,
        "held_out_distances": {
            q: round(float(np.quantile(held_out, float(q))), 4) for q in ("0.5", "0.9", "0.95", "0.99")
        },
        "method": "Mahalanobis distance, Ledoit-Wolf shrinkage, on the square roots of the serving "
        "graph's pooled features; threshold set on 5 patient folds held out in turn",
    }
    return (
        ood_reference_bytes(reference, features),
        reference.threshold,
        summary,
    )


def model_version_evaluation_record(
    *,
    version: ModelVersion,
    table: LabelTable,
    scores: np.ndarray,
    evaluation_set: str,
    user: AbstractBaseUser | None = None,
    thresholds: dict[str, float] | None = None,
    model_card: dict | None = None,
    raw_scores: np.ndarray | None = None,
    features: np.ndarray | None = None,
    kind: str = Evaluation.HELD_OUT,
    details: dict | None = None,
) -> Evaluation:
    """Stores an evaluation of `version` on `table` given its served `scores` (N, K): per finding
    AUROC with its 95 % bootstrap interval (patient-level), positives and negatives, "not evaluable"
    below LUNGSITE_EVAL_MIN_POSITIVES; the mean with its interval; reliability, ECE and Brier per
    finding; subgroups; the operating points of the version's thresholds; from `features` (N, C)
    of a held-out evaluation, the out-of-distribution reference; and the labels, scores
    (`raw_scores` too, when calibration changed them) and hashed patient groups behind them, so
    anyone can recompute every figure. Only a held-out evaluation (`kind`) updates the version's
    latest-evaluation fields and can be in force. `thresholds` (when given) replace those classes'
    thresholds; `details` are kept beside the computed ones (e.g. images left out, notes)."""
    names = list(table.class_names)
    computed = evaluation_compute(
        table.labels,
        scores,
        names,
        groups=table.patients,
        attributes=table.attributes,
        min_positives=int(settings.LUNGSITE_EVAL_MIN_POSITIVES),
        rounds=int(settings.LUNGSITE_BOOTSTRAP_ROUNDS),
    )
    per_class, mean = computed["per_class"], computed["mean"]
    ood_bytes, ood_threshold, ood_summary = _ood(features, table, kind)
    if thresholds is not None:
        version.thresholds = {**(version.thresholds or {}), **thresholds}
    record = {
        "settings": computed["settings"],
        "calibration": computed["calibration"],
        "calibrated_findings": sorted(
            name
            for name, entry in ((version.calibration or {}).get("per_class") or {}).items()
            if "a" in entry
        ),
        "subgroups": computed["subgroups"],
        "operating_points": _operating_points(version, table.labels, scores),
        "ood": ood_summary,
        **(details or {}),
    }
    if table.after_model_output is not None:
        record["labels_after_model_output"] = int(sum(table.after_model_output))
    outputs = {
        "images": [p.name for p in table.paths],
        "patients": [_patient_key(p) for p in table.patients],
        "class_names": names,
        "labels": _none_for_nan(table.labels),
        "scores": _none_for_nan(scores),
    }
    if raw_scores is not None and not np.allclose(raw_scores, scores):
        outputs["raw_scores"] = _none_for_nan(raw_scores)
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            version=version,
            evaluation_set=evaluation_set[:300],
            set_sha256=table.set_sha256(),
            n_images=len(table.paths),
            kind=kind,
            per_class=per_class,
            mean_auroc=mean["auroc"],
            mean_auroc_low=mean["ci"][0] if mean["ci"] else None,
            mean_auroc_high=mean["ci"][1] if mean["ci"] else None,
            details=record,
            outputs=outputs,
            ood_reference=ood_bytes,
            ood_threshold=ood_threshold,
            created_by=user if getattr(user, "pk", None) else None,
        )
        fields = []
        if kind == Evaluation.HELD_OUT:
            version.per_class_auroc = {name: entry["auroc"] for name, entry in per_class.items()}
            version.per_class_counts = {
                name: {"positives": entry["positives"], "negatives": entry["negatives"]}
                for name, entry in per_class.items()
            }
            version.accuracy_auroc = mean["auroc"]
            version.evaluation_set = evaluation.evaluation_set
            version.evaluated_at = evaluation.created_at
            fields += [
                "per_class_auroc",
                "per_class_counts",
                "accuracy_auroc",
                "evaluation_set",
                "evaluated_at",
            ]
        if thresholds is not None:
            fields.append("thresholds")
        if model_card is not None:
            precision = (version.model_card or {}).get("serving_precision")
            # What the graph serves is the registration's, whatever the evaluation's card says.
            version.model_card = {**model_card, "serving_precision": precision} if precision else model_card
            fields.append("model_card")
        if fields:
            version.save(update_fields=fields)
    ci = mean["ci"]
    logger.info(
        "evaluated %s on %s (%s): mean AUROC %s, 95 %% CI %s",
        version.version_name,
        evaluation_set,
        kind,
        mean["auroc"],
        ci,
    )
    return evaluation


def model_version_calibration_store(
    *, version: ModelVersion, calibration: dict, fitted_on: str, evaluation: Evaluation | None = None
) -> ModelVersion:
    """Stores a fitted calibration (learning.calibration.calibration_fit) with the version; serving
    applies it from the next request. Its thresholds move to the new scale so that each keeps its
    operating point (the maps are strictly increasing)."""
    stored = {
        **calibration,
        "fitted_on": fitted_on[:300],
        "evaluation_id": evaluation.pk if evaluation is not None else None,
        "fitted_at": timezone.now().isoformat(),
    }
    version.thresholds = threshold_map(
        version.calibration,
        stored,
        version.class_names,
        {n: version.threshold_for(n) for n in version.class_names},
    )
    version.calibration = stored
    version.save(update_fields=["calibration", "thresholds"])
    return version


def served_scores(version: ModelVersion, raw: np.ndarray) -> np.ndarray:
    """What serving would return for raw sigmoid outputs (N, K): the version's calibration applied."""
    return calibration_apply(version.calibration, version.class_names, raw)[0]
