"""Calibration: whether a score of 0.3 means "30 % of such images have the finding", how to measure
it (reliability diagram, expected calibration error, Brier score) and how to correct it per finding.
No Django here; `calibration_apply` is what serving calls (analysis.services), with the version's
stored calibration.

Methods, both fitted per finding on labelled scores by maximum likelihood:
- ``platt`` (default): p' = sigmoid(a * logit(p) + b), a temperature (1 / a) and a bias. The bias
  matters here: training with class-balanced loss shifts every score towards 0.5 whatever the
  prevalence, and a temperature alone cannot move a score's centre.
- ``temperature``: p' = sigmoid(logit(p) / T), the bias fixed at 0.
Both are strictly increasing (a is kept above zero), so AUROC, the order of cases and every
threshold's operating point are unchanged: the version's thresholds are mapped through the new
calibration when it is stored (`threshold_map`), and "positive" means what it meant before.
Isotonic regression is not offered: its flat steps give different scores the same value, which
changes decisions at a threshold, and on the few hundred labelled images a site has it overfits.

A finding with fewer positives or negatives than the minimum is left uncalibrated, and what the API
returns for it is a score, not a probability.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

METHODS = ("platt", "temperature")
BINS = 10
_EPS = 1e-7
_MIN_SLOPE = 1e-3


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), _EPS, 1.0 - _EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


# ---------------------------------------------------------------------------------------------
# Measuring


def reliability(y: np.ndarray, p: np.ndarray, *, bins: int = BINS) -> dict:
    """Reliability of scores `p` for labels `y` (unlabelled rows removed by the caller): equal-width
    bins over [0, 1], each with its count, mean score and observed share of positives; the expected
    calibration error (ECE: the count-weighted mean |observed - mean score| over the bins) and the
    Brier score (mean squared difference between score and label)."""
    y, p = np.asarray(y, dtype=np.float64), np.asarray(p, dtype=np.float64)
    if len(y) == 0:
        return {"bins": [], "ece": None, "brier": None, "n": 0, "mean_score": None, "prevalence": None}
    which = np.minimum((p * bins).astype(int), bins - 1)
    table, ece = [], 0.0
    for b in range(bins):
        inside = which == b
        n = int(inside.sum())
        entry = {"low": b / bins, "high": (b + 1) / bins, "n": n, "mean_score": None, "observed": None}
        if n:
            mean_score, observed = float(p[inside].mean()), float(y[inside].mean())
            entry |= {"mean_score": round(mean_score, 4), "observed": round(observed, 4)}
            ece += n / len(y) * abs(observed - mean_score)
        table.append(entry)
    return {
        "bins": table,
        "ece": round(ece, 4),
        "brier": round(float(np.mean((p - y) ** 2)), 4),
        "n": int(len(y)),
        "mean_score": round(float(p.mean()), 4),
        "prevalence": round(float(y.mean()), 4),
    }


def reliability_per_class(labels: np.ndarray, scores: np.ndarray, class_names: Sequence[str]) -> dict:
    """{name: reliability(...)} over each finding's labelled rows."""
    result = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        result[name] = reliability(labels[known, k], scores[known, k])
    return result


# ---------------------------------------------------------------------------------------------
# Fitting and applying


def _fit_one(y: np.ndarray, p: np.ndarray, method: str) -> dict:
    from scipy.optimize import minimize

    z = _logit(p)

    def loss(params):
        a, b = (params[0], params[1]) if method == "platt" else (params[0], 0.0)
        q = np.clip(_sigmoid(a * z + b), _EPS, 1 - _EPS)
        return -float(np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    start = [1.0, 0.0] if method == "platt" else [1.0]
    bounds = [(_MIN_SLOPE, 100.0), (-50.0, 50.0)] if method == "platt" else [(_MIN_SLOPE, 100.0)]
    fitted = minimize(loss, start, method="L-BFGS-B", bounds=bounds)
    a = float(fitted.x[0])
    b = float(fitted.x[1]) if method == "platt" else 0.0
    return {"a": round(a, 6), "b": round(b, 6)}


def calibration_fit(
    labels: np.ndarray,
    raw_scores: np.ndarray,
    class_names: Sequence[str],
    *,
    method: str = "platt",
    min_positives: int = 10,
) -> dict:
    """Fits `method` per finding on labelled raw scores (the graph's sigmoid outputs). Returns
    {"method", "per_class": {name: {"a", "b", "positives", "negatives"} or {"reason"}}}: findings
    with fewer than `min_positives` positives or negatives get a reason instead of parameters."""
    if method not in METHODS:
        raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, not {method!r}")
    per_class = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        y, p = labels[known, k], raw_scores[known, k]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        if min(positives, negatives) < max(1, min_positives):
            fewer = "positives" if positives < negatives else "negatives"
            per_class[name] = {
                "positives": positives,
                "negatives": negatives,
                "reason": f"{min(positives, negatives)} {fewer}, fewer than the minimum of {min_positives}: "
                "left uncalibrated",
            }
            continue
        per_class[name] = {**_fit_one(y, p, method), "positives": positives, "negatives": negatives}
    return {"method": method, "per_class": per_class}


def calibrated_classes(calibration: dict | None) -> set[str]:
    return {name for name, entry in ((calibration or {}).get("per_class") or {}).items() if "a" in entry}


def calibration_apply(
    calibration: dict | None, class_names: Sequence[str], raw: np.ndarray
) -> tuple[np.ndarray, list[bool]]:
    """The served scores of raw sigmoid outputs `raw` ((K,) or (N, K), findings ordered as
    `class_names`), and per finding whether it is calibrated. Findings without fitted parameters
    pass through unchanged. This is the one place serving applies a calibration."""
    raw = np.asarray(raw, dtype=np.float64)
    per_class = (calibration or {}).get("per_class") or {}
    out = raw.copy()
    flags = []
    for k, name in enumerate(class_names):
        entry = per_class.get(name) or {}
        if "a" not in entry:
            flags.append(False)
            continue
        out[..., k] = _sigmoid(entry["a"] * _logit(raw[..., k]) + entry["b"])
        flags.append(True)
    return out, flags


def calibration_invert(entry: dict, value: float) -> float:
    """The raw score that `entry`'s map sends to `value` (the map is strictly increasing)."""
    z = float(_logit(np.asarray(value)))
    return float(_sigmoid((z - entry["b"]) / entry["a"]))


def threshold_map(old: dict | None, new: dict | None, class_names: Sequence[str], thresholds: dict) -> dict:
    """Thresholds on the scale of calibration `old` moved to the scale of `new`, so each keeps its
    operating point: t_new = new(old^-1(t_old)). `thresholds` maps names to thresholds on the old
    scale (0.5 where absent)."""
    old_pc = (old or {}).get("per_class") or {}
    new_pc = (new or {}).get("per_class") or {}
    result = {}
    for name in class_names:
        t = float(thresholds.get(name, 0.5))
        if "a" in (old_pc.get(name) or {}):
            t = calibration_invert(old_pc[name], t)
        if "a" in (new_pc.get(name) or {}):
            entry = new_pc[name]
            t = float(_sigmoid(entry["a"] * _logit(np.asarray(t)) + entry["b"]))
        result[name] = min(max(t, 0.0), 1.0) if math.isfinite(t) else 0.5
    return result
