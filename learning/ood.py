"""Inputs a version was never evaluated on: how far an image's features lie from those of the
images its evaluation measured, and where "far" begins.

The features are the serving graph's own `features` output (engine.export: the last feature map,
global-average-pooled, i.e. what the classifier reads), so the distance describes the version that
scores the image, computed in the same forward pass at no extra cost. The distance is Mahalanobis
with Ledoit-Wolf shrinkage: with a few hundred reference images and 1024 features the sample
covariance is singular, and shrinking it towards a multiple of the identity gives a usable inverse.
Features enter as square roots (they are non-negative and heavy-tailed; the root makes them closer
to Gaussian, which Mahalanobis assumes).

The threshold is set on held-out images: the reference images are split into folds by patient; each
fold's distances are measured against a reference fitted on the other folds, and the threshold is
the `quantile` of those held-out distances (by default 0.95: about 1 in 20 images like the
evaluation set's is marked outside). Distances of new images are measured against the reference of
all images, which is slightly closer than the folds', so the mark errs towards "inside".

What it can and cannot catch is measured in docs/trust.md: it is a statement about this version's
features, not a body-part or image-type classifier.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

DEFAULT_QUANTILE = 0.95
FOLDS = 5
MIN_REFERENCE = 20


class OodError(Exception):
    """A reference cannot be built from these features; the message says why."""


def _transform(features: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(np.asarray(features, dtype=np.float64), 0.0))


@dataclass
class OodReference:
    """A fitted reference: distances of new features from it (`distance`), and the threshold."""

    mean: np.ndarray  # (C,)
    components: np.ndarray  # (r, C) directions of the reference's own spread
    variances: np.ndarray  # (r,) shrunk variances along them
    floor: float  # shrunk variance in every other direction
    threshold: float
    quantile: float
    n: int
    shrinkage: float

    @classmethod
    def fit(
        cls,
        features: np.ndarray,
        *,
        threshold: float = float("nan"),
        quantile: float = DEFAULT_QUANTILE,
        shrinkage: float | None = None,
    ):
        """Fits mean and Ledoit-Wolf-shrunk covariance of `features` (n, C). The covariance is kept
        as its eigen-decomposition (at most n - 1 directions plus the shrinkage floor), which gives
        the same distances as sklearn's LedoitWolf precision without a C x C inverse. `shrinkage`
        (stored with a reference) skips sklearn's estimate, so serving needs numpy only."""
        x = _transform(features)
        n, p = x.shape
        mean = x.mean(axis=0)
        centred = x - mean
        if shrinkage is None:
            from sklearn.covariance import ledoit_wolf_shrinkage

            shrinkage = float(ledoit_wolf_shrinkage(centred, assume_centered=True))
        mu = float((centred**2).sum() / (n * p))
        _, singular, vt = np.linalg.svd(centred, full_matrices=False)
        variances = (1.0 - shrinkage) * singular**2 / n + shrinkage * mu
        floor = max(shrinkage * mu, 1e-12 * max(mu, 1e-12))
        keep = variances > floor * (1 + 1e-9)  # directions the shrinkage has not flattened
        return cls(
            mean=mean,
            components=vt[keep],
            variances=variances[keep],
            floor=floor,
            threshold=threshold,
            quantile=quantile,
            n=n,
            shrinkage=shrinkage,
        )

    def distance(self, features: np.ndarray) -> np.ndarray:
        """Mahalanobis distance of each row of `features` ((N, C) or (C,)) from the reference."""
        x = np.atleast_2d(_transform(features)) - self.mean
        z = x @ self.components.T  # (N, r)
        inside = (z**2 / self.variances).sum(axis=1)
        rest = np.maximum((x**2).sum(axis=1) - (z**2).sum(axis=1), 0.0) / self.floor
        return np.sqrt(inside + rest)


def _folds(groups: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """A fold number per image, whole patients to one fold."""
    codes, index = np.unique(np.asarray(list(groups), dtype=object).astype(str), return_inverse=True)
    order = np.random.default_rng(seed).permutation(len(codes))
    fold_of_group = np.empty(len(codes), dtype=int)
    fold_of_group[order] = np.arange(len(codes)) % folds
    return fold_of_group[index]


def held_out_distances(features: np.ndarray, groups: Sequence[str], *, folds: int = FOLDS, seed: int = 0):
    """Each image's distance from a reference fitted without its patient's fold: (n,)."""
    features = np.asarray(features, dtype=np.float64)
    fold = _folds(groups, min(folds, len(set(map(str, groups)))), seed)
    distances = np.empty(len(features))
    for f in np.unique(fold):
        out = fold == f
        distances[out] = OodReference.fit(features[~out]).distance(features[out])
    return distances


def ood_reference_fit(
    features: np.ndarray, groups: Sequence[str], *, quantile: float = DEFAULT_QUANTILE, seed: int = 0
) -> tuple[OodReference, np.ndarray]:
    """The reference of `features` (n, C) with its threshold set on held-out folds, and those
    held-out distances (n,). Raises OodError with fewer than MIN_REFERENCE images or 2 patients."""
    features = np.asarray(features, dtype=np.float64)
    if len(features) < MIN_REFERENCE:
        raise OodError(f"{len(features)} images; a reference needs at least {MIN_REFERENCE}.")
    if len(set(map(str, groups))) < 2:
        raise OodError(
            "A reference needs images of at least 2 patients (its threshold is set on held-out ones)."
        )
    distances = held_out_distances(features, groups, seed=seed)
    threshold = float(np.quantile(distances, quantile))
    return OodReference.fit(features, threshold=threshold, quantile=quantile), distances


def ood_reference_bytes(reference: OodReference, features: np.ndarray) -> bytes:
    """What an Evaluation stores: the reference images' features (float32), the threshold and the
    shrinkage (so that loading needs no estimate)."""
    buffer = io.BytesIO()
    np.savez_compressed(
        buffer,
        features=np.asarray(features, dtype=np.float32),
        threshold=np.float64(reference.threshold),
        quantile=np.float64(reference.quantile),
        shrinkage=np.float64(reference.shrinkage),
    )
    return buffer.getvalue()


def ood_reference_load(data: bytes) -> OodReference:
    with np.load(io.BytesIO(bytes(data))) as stored:
        return OodReference.fit(
            stored["features"].astype(np.float64),
            threshold=float(stored["threshold"]),
            quantile=float(stored["quantile"]),
            shrinkage=float(stored["shrinkage"]),
        )


# ---------------------------------------------------------------------------------------------
# Serving: the reference of the evaluation in force, loaded once per process

# Keyed by (id, created_at): ids can come back (a restored database, tests' rolled-back rows).
_cache: OrderedDict[tuple, OodReference | None] = OrderedDict()
_cache_lock = threading.Lock()
_CACHE_ENTRIES = 4


def _reference_for(evaluation) -> OodReference | None:
    key = (evaluation.pk, evaluation.created_at)
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    from registry.models import Evaluation

    data = Evaluation.objects.filter(pk=evaluation.pk).values_list("ood_reference", flat=True).first()
    reference = ood_reference_load(data) if data else None
    with _cache_lock:
        _cache[key] = reference
        while len(_cache) > _CACHE_ENTRIES:
            _cache.popitem(last=False)
    return reference


def ood_assess(*, evaluation, features: np.ndarray | None) -> dict | None:
    """{"distance", "threshold", "outside", "evaluation_id"} of one image's pooled `features` (C,)
    against the reference stored with `evaluation` (the evaluation in force for the version that
    scored it), or None when there is no evaluation, no reference or no features."""
    if evaluation is None or features is None or getattr(evaluation, "ood_threshold", None) is None:
        return None
    reference = _reference_for(evaluation)
    if reference is None:
        return None
    distance = float(reference.distance(features)[0])
    return {
        "distance": round(distance, 4),
        "threshold": round(reference.threshold, 4),
        "outside": bool(distance > reference.threshold),
        "evaluation_id": evaluation.pk,
    }


def ood_cache_clear() -> None:
    with _cache_lock:
        _cache.clear()
