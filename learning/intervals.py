"""How sure a figure is: 95 % percentile-bootstrap intervals for AUROC (per finding and their
mean), for thresholds chosen at a target sensitivity, and for proportions. No Django here.

Resampling is by patient where patients are known: each bootstrap round draws as many patients as
the set has, with replacement, and every image of a drawn patient comes along (as often as its
patient was drawn). Images of one patient are not independent, so resampling images would make the
intervals too narrow. A round is a row of integer weights over the images, so every statistic of a
round is a weighted statistic of the original arrays (no copies).

Figures are "not evaluable" (None) when a finding has fewer than `min_positives` positives or
negatives: an AUROC from 3 positives moves by +-0.2 by chance, and a number invites belief.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

LEVEL = 0.95


def bootstrap_weights(groups: Sequence[str], *, rounds: int, seed: int) -> np.ndarray:
    """(rounds, N) int32: how often each image is drawn in each round, resampling the distinct
    `groups` (patient ids; one group per image when patients are unknown) with replacement."""
    codes, index = np.unique(np.asarray(list(groups), dtype=object).astype(str), return_inverse=True)
    rng = np.random.default_rng(seed)
    draws = rng.multinomial(len(codes), np.full(len(codes), 1.0 / len(codes)), size=rounds)  # (B, G)
    return draws[:, index].astype(np.int32)


def weighted_auroc(y: np.ndarray, s: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """AUROC of scores `s` (N,) for labels `y` (N,) in {0, 1} under each row of `weights` (B, N):
    the Mann-Whitney statistic with ties counted half, each image counted as often as its weight.
    (B,) float; NaN where a row has no positive or no negative weight. With weights of one it
    equals sklearn's roc_auc_score."""
    order = np.argsort(s, kind="mergesort")
    s, y, w = s[order], y[order], np.atleast_2d(weights)[:, order].astype(np.float64)
    starts = np.flatnonzero(np.r_[True, s[1:] != s[:-1]])  # first index of each distinct score
    positive = np.add.reduceat(w * (y == 1), starts, axis=1)  # (B, distinct scores)
    negative = np.add.reduceat(w * (y == 0), starts, axis=1)
    below = np.cumsum(negative, axis=1) - negative  # negative weight strictly below each score
    wins = (positive * (below + 0.5 * negative)).sum(axis=1)
    pairs = positive.sum(axis=1) * negative.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(pairs > 0, wins / np.where(pairs > 0, pairs, 1), np.nan)


def percentile_interval(values: np.ndarray, level: float = LEVEL) -> list[float] | None:
    """[low, high] of the central `level` of the finite `values`; None without enough rounds."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if len(values) < 20:
        return None
    tail = (1.0 - level) / 2.0 * 100.0
    low, high = np.percentile(values, [tail, 100.0 - tail])
    return [round(float(low), 4), round(float(high), 4)]


def auroc_intervals(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: Sequence[str],
    *,
    weights: np.ndarray,
    min_positives: int,
) -> tuple[dict[str, dict], dict]:
    """Per finding and for their mean, AUROC with its interval over the bootstrap `weights`
    (B, N). labels (N, K) in {0, 1, NaN}, scores (N, K). Returns (per_class, mean):
    per_class[name] = {"auroc", "ci", "positives", "negatives", "evaluable", "reason"}, where a
    finding with fewer than `min_positives` positives or negatives has auroc None, evaluable False
    and the reason; mean = {"auroc", "ci", "findings"}: the mean over the evaluable findings, its
    interval from the same rounds (each round's mean over those findings)."""
    from sklearn.metrics import roc_auc_score

    per_class: dict[str, dict] = {}
    rounds = []
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        y, s = labels[known, k], scores[known, k]
        positives, negatives = int((y == 1).sum()), int((y == 0).sum())
        entry = {"auroc": None, "ci": None, "positives": positives, "negatives": negatives}
        if min(positives, negatives) < max(1, min_positives):
            fewer = "positives" if positives < max(1, min_positives) else "negatives"
            entry |= {
                "evaluable": False,
                "reason": f"{min(positives, negatives)} {fewer}, fewer than the minimum of {min_positives}",
            }
        else:
            boot = weighted_auroc(y, s, weights[:, known])
            rounds.append(boot)
            entry |= {
                "auroc": round(float(roc_auc_score(y, s)), 4),
                "ci": percentile_interval(boot),
                "evaluable": True,
                "reason": "",
            }
        per_class[name] = entry
    evaluable = [e["auroc"] for e in per_class.values() if e["evaluable"]]
    if not evaluable:
        return per_class, {"auroc": None, "ci": None, "findings": 0}
    with np.errstate(invalid="ignore"):
        mean_rounds = np.nanmean(np.vstack(rounds), axis=0)
    return per_class, {
        "auroc": round(float(np.mean(evaluable)), 4),
        "ci": percentile_interval(mean_rounds),
        "findings": len(evaluable),
    }


def proportion_interval(successes: int, total: int, level: float = LEVEL) -> list[float] | None:
    """Wilson score interval of a proportion; None when `total` is 0."""
    if total <= 0:
        return None
    z = 1.959963984540054 if level == LEVEL else _normal_quantile(0.5 + level / 2)
    p = successes / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return [round(max(0.0, centre - half), 4), round(min(1.0, centre + half), 4)]


def _normal_quantile(q: float) -> float:
    from scipy.stats import norm

    return float(norm.ppf(q))


def threshold_at_sensitivity(y: np.ndarray, s: np.ndarray, target: float) -> float | None:
    """The highest threshold t such that the share of positives with s >= t is at least `target`
    (a finding is positive when its score >= threshold). None without positives and negatives."""
    positives = np.sort(s[y == 1])[::-1]
    if not len(positives) or not (y == 0).any():
        return None
    needed = max(1, math.ceil(target * len(positives) - 1e-9))
    return float(min(max(positives[needed - 1], 0.0), 1.0))


def youden_threshold(y: np.ndarray, s: np.ndarray) -> float | None:
    """The threshold maximising sensitivity + specificity - 1 (the first best when tied)."""
    from sklearn.metrics import roc_curve

    if not ((y == 1).any() and (y == 0).any()):
        return None
    fpr, tpr, thresholds = roc_curve(y, s)
    best = int(np.argmax(tpr - fpr))
    return float(min(max(thresholds[best], 0.0), 1.0))


def threshold_choice(
    y: np.ndarray,
    s: np.ndarray,
    groups: Sequence[str],
    *,
    target_sensitivity: float | None,
    rounds: int,
    seed: int,
) -> dict | None:
    """A threshold chosen on (y, s) by the rule (`target_sensitivity`, else Youden's J), with the
    interval of the thresholds the same rule picks on bootstrap resamples (by `groups`), and the
    sensitivity and specificity it gives on this set with their Wilson intervals. None when the set
    lacks positives or negatives."""

    def rule(yy, ss):
        if target_sensitivity is not None:
            return threshold_at_sensitivity(yy, ss, target_sensitivity)
        return youden_threshold(yy, ss)

    threshold = rule(y, s)
    if threshold is None:
        return None
    weights = bootstrap_weights(groups, rounds=rounds, seed=seed)
    picks = []
    for row in weights:
        index = np.repeat(np.arange(len(y)), row)
        pick = rule(y[index], s[index])
        if pick is not None:
            picks.append(pick)
    return {
        "threshold": threshold,
        "ci": percentile_interval(np.asarray(picks)),
        "rule": f"sensitivity >= {target_sensitivity}" if target_sensitivity is not None else "Youden's J",
        **operating_point(y, s, threshold),
    }


def operating_point(y: np.ndarray, s: np.ndarray, threshold: float) -> dict:
    """Sensitivity and specificity of `threshold` on (y, s), with Wilson intervals and counts."""
    called = s >= threshold
    tp, fn = int((called & (y == 1)).sum()), int((~called & (y == 1)).sum())
    tn, fp = int((~called & (y == 0)).sum()), int((called & (y == 0)).sum())
    return {
        "sensitivity": round(tp / (tp + fn), 4) if tp + fn else None,
        "sensitivity_ci": proportion_interval(tp, tp + fn),
        "specificity": round(tn / (tn + fp), 4) if tn + fp else None,
        "specificity_ci": proportion_interval(tn, tn + fp),
        "positives": tp + fn,
        "negatives": tn + fp,
    }


def weighted_kappa(a: np.ndarray, b: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Cohen's kappa of two binary calls `a`, `b` (N,) under each row of `weights` (B, N): (B,),
    NaN where chance agreement is 1 (both raters constant). With weights of one it equals
    sklearn's cohen_kappa_score."""
    w = np.atleast_2d(weights).astype(np.float64)
    total = w.sum(axis=1)
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        observed = (w * (a == b)).sum(axis=1) / total
        pa, pb = (w * a).sum(axis=1) / total, (w * b).sum(axis=1) / total
        chance = pa * pb + (1 - pa) * (1 - pb)
        return np.where(chance < 1, (observed - chance) / (1 - chance), np.nan)
