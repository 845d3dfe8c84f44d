"""The out-of-distribution distance: Mahalanobis with Ledoit-Wolf shrinkage, equal to sklearn's,
with its threshold set on held-out folds."""

import numpy as np
import pytest
from sklearn.covariance import LedoitWolf

from learning.ood import (
    OodError,
    OodReference,
    held_out_distances,
    ood_reference_bytes,
    ood_reference_fit,
    ood_reference_load,
)


def _features(n, p=40, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    base = rng.gamma(2.0, 1.0, size=(n, p))
    return base + shift


def test_its_distance_is_sklearns_ledoit_wolf_mahalanobis_on_the_square_roots():
    reference = _features(30, p=60)
    new = _features(5, p=60, seed=1)
    ours = OodReference.fit(reference).distance(new)
    estimator = LedoitWolf().fit(np.sqrt(reference))
    expected = np.sqrt(estimator.mahalanobis(np.sqrt(new)))
    np.testing.assert_allclose(ours, expected, rtol=1e-6)


def test_its_threshold_comes_from_held_out_folds_and_far_inputs_are_outside():
    features = _features(100)
    groups = [str(i // 2) for i in range(100)]
    reference, distances = ood_reference_fit(features, groups, quantile=0.95)
    np.testing.assert_allclose(distances, held_out_distances(features, groups))
    assert reference.threshold == pytest.approx(np.quantile(distances, 0.95))
    # In-sample distances are smaller than held-out ones: that is why the threshold is set held out.
    assert np.median(reference.distance(features)) < np.median(distances)
    inside = reference.distance(_features(200, seed=7))
    outside = reference.distance(_features(20, seed=8, shift=3.0))
    assert (inside > reference.threshold).mean() < 0.15
    assert (outside > reference.threshold).all()


def test_it_round_trips_through_bytes_and_refuses_too_few_images():
    features = _features(40)
    reference, _ = ood_reference_fit(features, [str(i) for i in range(40)])
    loaded = ood_reference_load(ood_reference_bytes(reference, features))
    probe = _features(3, seed=9)
    np.testing.assert_allclose(loaded.distance(probe), reference.distance(probe), rtol=1e-5)
    assert loaded.threshold == reference.threshold
    with pytest.raises(OodError, match="at least 20"):
        ood_reference_fit(features[:10], [str(i) for i in range(10)])
