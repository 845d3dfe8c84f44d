"""Calibration measured (reliability, ECE, Brier) and fitted (Platt / temperature), with the
thresholds moved so that every decision stays the same."""

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from learning.calibration import (
    calibration_apply,
    calibration_fit,
    reliability,
    threshold_map,
)


def test_it_measures_reliability_ece_and_brier_by_hand():
    y = np.array([0, 0, 1, 1, 1])
    p = np.array([0.05, 0.15, 0.15, 0.95, 0.85])
    result = reliability(y, p)
    # Bins: [0, .1): one case, score .05, none positive; [.1, .2): scores .15, .15, one positive;
    # [.8, .9): .85 positive; [.9, 1]: .95 positive.
    expected_ece = (1 * 0.05 + 2 * abs(0.5 - 0.15) + 1 * 0.15 + 1 * 0.05) / 5
    assert result["ece"] == pytest.approx(expected_ece, abs=1e-4)
    assert result["brier"] == pytest.approx(np.mean((p - y) ** 2), abs=1e-4)
    assert sum(b["n"] for b in result["bins"]) == 5 and result["prevalence"] == 0.6


def _class_balanced_scores(n=600, seed=0):
    """Scores like class-balanced training gives: centred near 0.5 whatever the prevalence (0.1)."""
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.1).astype(float)
    logits = rng.normal(0.0, 1.0, n) + 1.2 * y
    return y, 1 / (1 + np.exp(-logits))


@pytest.mark.parametrize("method", ["platt", "temperature"])
def test_a_fitted_calibration_keeps_the_order_and_platt_fixes_the_prevalence(method):
    y, raw = _class_balanced_scores()
    calibration = calibration_fit(y[:, None], raw[:, None], ["A"], method=method, min_positives=10)
    served, flags = calibration_apply(calibration, ["A"], raw[:, None])
    assert flags == [True]
    assert roc_auc_score(y, served[:, 0]) == pytest.approx(roc_auc_score(y, raw), abs=1e-9)
    before, after = reliability(y, raw), reliability(y, served[:, 0])
    if method == "platt":
        assert raw.mean() > 0.4 and abs(served.mean() - y.mean()) < 0.02
        assert after["ece"] < before["ece"] / 3 and after["brier"] < before["brier"]


def test_a_finding_with_too_few_positives_stays_uncalibrated():
    y, raw = _class_balanced_scores(n=50, seed=3)
    y[:] = 0
    y[:4] = 1
    calibration = calibration_fit(y[:, None], raw[:, None], ["A"], min_positives=10)
    assert (
        "a" not in calibration["per_class"]["A"] and "4 positives" in calibration["per_class"]["A"]["reason"]
    )
    served, flags = calibration_apply(calibration, ["A"], raw[:, None])
    assert flags == [False] and np.array_equal(served[:, 0], raw)


def test_moved_thresholds_call_the_same_cases_positive():
    y, raw = _class_balanced_scores(seed=5)
    old = calibration_fit(y[:, None], raw[:, None], ["A"], method="temperature", min_positives=10)
    new = calibration_fit(y[:, None], raw[:, None], ["A"], method="platt", min_positives=10)
    old_scores = calibration_apply(old, ["A"], raw[:, None])[0][:, 0]
    new_scores = calibration_apply(new, ["A"], raw[:, None])[0][:, 0]
    for threshold in (0.3, 0.5, 0.62):
        moved = threshold_map(old, new, ["A"], {"A": threshold})["A"]
        assert ((old_scores >= threshold) == (new_scores >= moved)).all()
    assert threshold_map(None, new, ["A"], {})["A"] != 0.5  # the default 0.5 moves too
