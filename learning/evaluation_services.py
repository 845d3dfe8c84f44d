"""Writes of measured evaluations: `model_version_evaluation_record` stores one (the Evaluation row
with its outputs, and the version's latest-evaluation fields). The activation gate that reads them
lives with activation (registry.gate)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import numpy as np
from django.db import transaction

from learning.evaluation import mean_auroc, per_class_auroc
from registry.models import Evaluation, ModelVersion

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

    from learning.labels import LabelTable

logger = logging.getLogger(__name__)


def _none_for_nan(rows: np.ndarray) -> list[list[float | None]]:
    return [[None if np.isnan(v) else round(float(v), 6) for v in row] for row in rows]


def model_version_evaluation_record(
    *,
    version: ModelVersion,
    table: LabelTable,
    scores: np.ndarray,
    evaluation_set: str,
    user: AbstractBaseUser | None = None,
    thresholds: dict[str, float] | None = None,
    model_card: dict | None = None,
) -> Evaluation:
    """Stores an evaluation of `version` on `table` given its `scores` (N, K) probabilities: the
    per-class AUROC with positives and negatives, their mean, the labels and scores behind them
    (so anyone can recompute the table), and on the version the latest evaluation's set, date and
    counts; `thresholds` (when given) replace those classes' thresholds."""
    per_class = per_class_auroc(table.labels, scores, table.class_names)
    mean = mean_auroc(per_class)
    with transaction.atomic():
        evaluation = Evaluation.objects.create(
            version=version,
            evaluation_set=evaluation_set[:300],
            set_sha256=table.set_sha256(),
            n_images=len(table.paths),
            per_class=per_class,
            mean_auroc=mean,
            outputs={
                "images": [p.name for p in table.paths],
                "class_names": list(table.class_names),
                "labels": _none_for_nan(table.labels),
                "scores": _none_for_nan(scores),
            },
            created_by=user if getattr(user, "pk", None) else None,
        )
        version.per_class_auroc = {name: entry["auroc"] for name, entry in per_class.items()}
        version.per_class_counts = {
            name: {"positives": entry["positives"], "negatives": entry["negatives"]}
            for name, entry in per_class.items()
        }
        version.accuracy_auroc = mean
        version.evaluation_set = evaluation.evaluation_set
        version.evaluated_at = evaluation.created_at
        fields = ["per_class_auroc", "per_class_counts", "accuracy_auroc", "evaluation_set", "evaluated_at"]
        if thresholds is not None:
            version.thresholds = {**(version.thresholds or {}), **thresholds}
            fields.append("thresholds")
        if model_card is not None:
            version.model_card = model_card
            fields.append("model_card")
        version.save(update_fields=fields)
    logger.info("evaluated %s on %s: mean AUROC %s", version.version_name, evaluation_set, mean)
    return evaluation
