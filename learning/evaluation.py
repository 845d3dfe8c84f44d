"""Scoring a model on a labelled image set: label tables, per-class AUROC, Youden's J thresholds.
No Django here; `evaluate_model` wires it to the registry."""

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score, roc_curve


class EvaluationError(Exception):
    """A label table or image set that cannot be evaluated; the message says why."""


@dataclass
class LabelledSet:
    """Image paths with their labels: `labels` (N, K) float (1 positive, 0 negative, NaN unlabelled),
    columns ordered as `class_names`; `labelled` says which classes had a column in the table."""

    paths: list[Path]
    labels: np.ndarray
    class_names: list[str]
    labelled: list[bool] = field(default_factory=list)


def read_labels(csv_path: Path, images_dir: Path, class_names: Sequence[str], *, limit: int | None = None):
    """Reads a label table in the format of nih_labels.csv: one row per image, the image in column
    `path` (relative to `images_dir`) or else `file`, and one 0/1 column per class, named as the model's
    class names. Classes without a column stay unlabelled (NaN). Returns a LabelledSet."""
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = reader.fieldnames or []
            rows = list(reader)
    except OSError as exc:
        raise EvaluationError(f"Cannot read the label table {csv_path}: {exc.strerror or exc}.") from exc
    path_column = "path" if "path" in columns else "file" if "file" in columns else None
    if path_column is None:
        raise EvaluationError(f"The label table {csv_path.name} has no 'path' or 'file' column.")
    labelled = [name in columns for name in class_names]
    if not any(labelled):
        raise EvaluationError(
            f"The label table {csv_path.name} has no column named after any of the model's classes "
            f"({', '.join(class_names[:5])}, ...)."
        )
    if limit is not None:
        rows = rows[:limit]
    if not rows:
        raise EvaluationError(f"The label table {csv_path.name} has no rows.")

    labels = np.full((len(rows), len(class_names)), np.nan, dtype=np.float64)
    paths = []
    for i, row in enumerate(rows):
        paths.append(images_dir / row[path_column])
        for k, name in enumerate(class_names):
            if labelled[k]:
                labels[i, k] = _label_value(row.get(name), name, i + 2)
    return LabelledSet(paths=paths, labels=labels, class_names=list(class_names), labelled=labelled)


def _label_value(text: str | None, name: str, line: int) -> float:
    text = (text or "").strip()
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError as exc:
        raise EvaluationError(f"Line {line}: label {name!r} is {text!r}, expected 0 or 1.") from exc
    if value not in (0.0, 1.0):
        raise EvaluationError(f"Line {line}: label {name!r} is {text!r}, expected 0 or 1.")
    return value


def per_class_auroc(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict[str, dict]:
    """labels (N, K) in {0, 1, NaN}, scores (N, K) -> {name: {"auroc", "positives", "negatives"}}.
    AUROC is None where a class has no positives or no negatives (it is undefined there)."""
    result = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        y, s = labels[known, k], scores[known, k]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        auroc = float(roc_auc_score(y, s)) if positives and negatives else None
        result[name] = {"auroc": auroc, "positives": positives, "negatives": negatives}
    return result


def mean_auroc(per_class: dict[str, dict]) -> float | None:
    """Mean over the classes whose AUROC is defined; None if there is none."""
    values = [entry["auroc"] for entry in per_class.values() if entry["auroc"] is not None]
    return float(np.mean(values)) if values else None


def youden_thresholds(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict[str, float]:
    """Per class, the score threshold that maximises Youden's J = sensitivity + specificity - 1 on
    this set (a finding is positive when probability >= threshold). Classes without both positives
    and negatives get none."""
    result = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        y, s = labels[known, k], scores[known, k]
        if not ((y == 1).any() and (y == 0).any()):
            continue
        fpr, tpr, thresholds = roc_curve(y, s)
        best = int(np.argmax(tpr - fpr))
        # roc_curve's first threshold is +inf ("nothing positive"); keep thresholds probabilities.
        result[name] = float(min(max(thresholds[best], 0.0), 1.0))
    return result


def score_images(
    model,
    paths: Sequence[Path],
    *,
    load: Callable[[Path], "object"],
    batch_size: int = 16,
) -> tuple[np.ndarray, list[int], list[dict]]:
    """Runs the model over the images, `batch_size` at a time. `load(path)` returns the (1, C, S, S)
    float32 input (array or tensor) of one image or raises. Returns (probabilities (M, K) sigmoid outputs, the
    indexes into `paths` that were scored, the skipped images as {"path", "reason"})."""
    import torch

    rows, scored, skipped, batch, batch_index = [], [], [], [], []

    def flush():
        if not batch:
            return
        with torch.inference_mode():
            inputs = torch.cat([torch.as_tensor(item) for item in batch])
            rows.append(torch.sigmoid(model(inputs)).float().cpu().numpy())
        scored.extend(batch_index)
        batch.clear()
        batch_index.clear()

    for i, path in enumerate(paths):
        try:
            batch.append(load(path))
        except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the evaluation
            skipped.append({"path": str(path), "reason": str(exc) or type(exc).__name__})
            continue
        batch_index.append(i)
        if len(batch) >= batch_size:
            flush()
    flush()
    probabilities = np.concatenate(rows) if rows else np.zeros((0, 0), dtype=np.float32)
    return probabilities, scored, skipped


def evaluation_compute(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    groups: Sequence[str] | None,
    attributes: dict[str, list] | None = None,
    min_positives: int,
    rounds: int,
    seed: int = 0,
) -> dict:
    """Every figure of one evaluation from labels (N, K) in {0, 1, NaN} and served scores (N, K):
    per finding AUROC with its 95 % bootstrap interval, positives and negatives, "not evaluable"
    below `min_positives`; the mean over evaluable findings with its interval; reliability (bins,
    ECE, Brier) per finding; subgroups where `attributes` has them. `groups` (patient per image)
    makes the resampling patient-level; None resamples images. Returns {"per_class", "mean",
    "calibration", "subgroups", "settings"}."""
    from learning.calibration import reliability_per_class
    from learning.intervals import LEVEL, auroc_intervals, bootstrap_weights
    from learning.subgroups import subgroup_report

    class_names = list(class_names)
    by_patient = groups is not None and len(set(groups)) < len(groups)
    groups = list(groups) if groups is not None else [str(i) for i in range(len(labels))]
    weights = bootstrap_weights(groups, rounds=rounds, seed=seed)
    per_class, mean = auroc_intervals(
        labels, scores, class_names, weights=weights, min_positives=min_positives
    )
    return {
        "per_class": per_class,
        "mean": mean,
        "calibration": reliability_per_class(labels, scores, class_names),
        "subgroups": subgroup_report(
            labels, scores, class_names, attributes or {}, weights=weights, min_positives=min_positives
        ),
        "settings": {
            "min_positives": min_positives,
            "bootstrap_rounds": rounds,
            "seed": seed,
            "level": LEVEL,
            "interval": "percentile bootstrap",
            "resampling": "patient" if by_patient else "image (one image per patient, or patients unknown)",
            "patients": len(set(groups)),
        },
    }
