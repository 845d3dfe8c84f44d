"""The interval arithmetic, checked against sklearn and against resampling written out plainly."""

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score, roc_auc_score

from learning.intervals import (
    auroc_intervals,
    bootstrap_weights,
    operating_point,
    proportion_interval,
    threshold_choice,
    weighted_auroc,
    weighted_kappa,
)


def _data(n=120, seed=0, signal=1.0):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(float)
    s = np.round(rng.random(n) + signal * y * 0.5, 2)  # rounded: ties included
    return y, s


def test_it_computes_the_auroc_of_sklearn_with_ties_and_with_repeats():
    y, s = _data()
    assert weighted_auroc(y, s, np.ones((1, len(y))))[0] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    counts = np.random.default_rng(1).integers(0, 4, size=len(y))
    repeated = np.repeat(np.arange(len(y)), counts)
    expected = roc_auc_score(y[repeated], s[repeated])
    assert weighted_auroc(y, s, counts[None, :])[0] == pytest.approx(expected, abs=1e-12)
    assert np.isnan(weighted_auroc(np.zeros(5), np.arange(5.0), np.ones((1, 5))))[0]


def test_it_resamples_whole_patients():
    patients = [str(i // 3) for i in range(30)]
    weights = bootstrap_weights(patients, rounds=200, seed=0)
    assert weights.shape == (200, 30)
    for row in weights:
        per_patient = row.reshape(10, 3)
        assert (per_patient == per_patient[:, :1]).all()  # a patient's images come together
        assert per_patient[:, 0].sum() == 10  # as many patients drawn as there are


def test_its_interval_matches_a_plain_patient_bootstrap():
    y, s = _data(n=150, seed=3)
    patients = [str(i // 2) for i in range(150)]
    labels, scores = y[:, None], s[:, None]
    per_class, mean = auroc_intervals(
        labels, scores, ["A"], weights=bootstrap_weights(patients, rounds=2000, seed=5), min_positives=10
    )
    # Independently: draw patients with replacement, take their images, sklearn's AUROC.
    rng = np.random.default_rng(11)
    groups = np.array(patients)
    unique = np.unique(groups)
    values = []
    for _ in range(2000):
        drawn = rng.choice(unique, size=len(unique), replace=True)
        index = np.concatenate([np.flatnonzero(groups == p) for p in drawn])
        if len(set(y[index])) == 2:
            values.append(roc_auc_score(y[index], s[index]))
    low, high = np.percentile(values, [2.5, 97.5])
    entry = per_class["A"]
    assert entry["auroc"] == pytest.approx(roc_auc_score(y, s), abs=1e-4)
    assert entry["ci"][0] == pytest.approx(low, abs=0.02) and entry["ci"][1] == pytest.approx(high, abs=0.02)
    assert entry["ci"][0] < entry["auroc"] < entry["ci"][1]
    assert mean["auroc"] == entry["auroc"] and mean["findings"] == 1


def test_a_finding_with_too_few_positives_is_not_evaluable():
    y, s = _data(n=100, seed=2)
    few = np.zeros(100)
    few[:6] = 1
    labels = np.column_stack([y, few])
    scores = np.column_stack([s, s])
    per_class, mean = auroc_intervals(
        labels,
        scores,
        ["A", "B"],
        weights=bootstrap_weights(range(100), rounds=200, seed=0),
        min_positives=10,
    )
    assert per_class["B"]["auroc"] is None and per_class["B"]["evaluable"] is False
    assert per_class["B"]["positives"] == 6 and "6 positives" in per_class["B"]["reason"]
    assert mean["findings"] == 1 and mean["auroc"] == per_class["A"]["auroc"]


def test_it_gives_the_wilson_interval():
    assert proportion_interval(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert proportion_interval(0, 0) is None


def test_a_threshold_at_a_target_sensitivity_reaches_it_and_has_an_interval():
    y, s = _data(n=200, seed=4)
    choice = threshold_choice(y, s, [str(i) for i in range(200)], target_sensitivity=0.9, rounds=300, seed=0)
    assert choice["sensitivity"] >= 0.9
    assert choice["ci"][0] <= choice["threshold"] <= choice["ci"][1]
    point = operating_point(y, s, choice["threshold"])
    assert point["sensitivity"] == choice["sensitivity"] and point["specificity"] == choice["specificity"]
    assert point["sensitivity_ci"][0] <= point["sensitivity"] <= point["sensitivity_ci"][1]


def test_its_kappa_is_cohens():
    rng = np.random.default_rng(0)
    a = rng.random(50) < 0.4
    b = np.where(rng.random(50) < 0.8, a, ~a)
    assert weighted_kappa(a, b, np.ones((1, 50)))[0] == pytest.approx(cohen_kappa_score(a, b), abs=1e-12)
