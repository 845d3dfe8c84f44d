"""Scoring a labelled image set the way serving scores an upload: decoded as the analysis core
decodes (engine.decode.decode_gray), preprocessed by the version's preprocessing, run through the
version's own serving graph (ONNX Runtime, registry.cache's loader). So an evaluation measures the
numbers clinicians get, and the pooled features it keeps for the out-of-distribution reference come
out of the same forward pass as serving's. Also: which images a version was trained on."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from learning.models import TrainingImage
from registry.models import DEFAULT_PREPROCESSING, ModelVersion


def pixel_sha256(image: np.ndarray) -> str:
    """Identity of a decoded picture: sha256 of its dtype, shape and pixels. The same image saved
    as PNG, as the stored copy of an upload, or in another container gives the same value."""
    image = np.ascontiguousarray(image)
    digest = hashlib.sha256(f"{image.dtype.str}{image.shape}".encode())
    digest.update(image.tobytes())
    return digest.hexdigest()


@dataclass
class ScoredSet:
    """raw (M, K) sigmoid outputs and features (M, C) of the `scored` indexes into the paths;
    `pixel_ids` (M,) their identities; `skipped` the unreadable images as {"path", "reason"}."""

    raw: np.ndarray
    features: np.ndarray
    scored: list[int]
    pixel_ids: list[str]
    skipped: list[dict] = field(default_factory=list)


def score_with_serving_graph(
    version: ModelVersion, paths: Sequence, *, max_pixels: int, batch_size: int = 16
) -> ScoredSet:
    """Runs `version`'s serving graph over `paths` (Paths or StoredImages), `batch_size` at a time."""
    from engine.decode import decode_gray
    from engine.pipeline import predict_batch, preprocess
    from registry.cache import serving_model_load

    runtime = serving_model_load(version).model
    spec = version.preprocessing or DEFAULT_PREPROCESSING
    raw, features, scored, ids, skipped = [], [], [], [], []
    batch, batch_index, batch_ids = [], [], []

    def flush():
        if not batch:
            return
        for output in predict_batch(runtime, np.stack(batch)):
            raw.append(output.probabilities)
            features.append(output.features)
        scored.extend(batch_index)
        ids.extend(batch_ids)
        batch.clear()
        batch_index.clear()
        batch_ids.clear()

    for i, path in enumerate(paths):
        try:
            image = decode_gray(path.read_bytes(), path.name, max_pixels=max_pixels)
            batch.append(preprocess(image, spec)[0])
        except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the evaluation
            skipped.append({"path": str(path), "reason": str(exc) or type(exc).__name__})
            continue
        batch_index.append(i)
        batch_ids.append(pixel_sha256(image))
        if len(batch) >= batch_size:
            flush()
    flush()
    k = len(version.class_names)
    return ScoredSet(
        raw=np.asarray(raw, dtype=np.float64).reshape(-1, k),
        features=np.asarray(features, dtype=np.float32),
        scored=scored,
        pixel_ids=ids,
        skipped=skipped,
    )


def training_images_seen(version: ModelVersion, pixel_ids: Sequence[str]) -> set[str]:
    """Which of `pixel_ids` `version` was trained or tuned on."""
    seen: set[str] = set()
    ids = list(pixel_ids)
    for start in range(0, len(ids), 500):
        seen.update(
            TrainingImage.objects.filter(
                version=version, pixel_sha256__in=ids[start : start + 500]
            ).values_list("pixel_sha256", flat=True)
        )
    return seen


def training_images_record(
    *, version: ModelVersion, train: Sequence[str], validation: Sequence[str], base: ModelVersion | None
) -> int:
    """Records the pixel ids `version` was trained and tuned on, plus those of the version it was
    trained from. Returns how many rows it wrote."""
    rows = {pid: TrainingImage.TRAIN for pid in train}
    rows.update({pid: TrainingImage.VALIDATION for pid in validation if pid not in rows})
    if base is not None:
        for pid, split in TrainingImage.objects.filter(version=base).values_list("pixel_sha256", "split"):
            rows.setdefault(pid, split)
    TrainingImage.objects.bulk_create(
        [TrainingImage(version=version, pixel_sha256=pid, split=split) for pid, split in rows.items()],
        batch_size=1000,
        ignore_conflicts=True,
    )
    return len(rows)
