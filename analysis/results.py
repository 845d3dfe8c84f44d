"""From a model's probabilities to the result returned with a prediction and kept in the log: each
finding's threshold and whether it is positive, the version that produced it, and what every output
of it must say about that version (its honesty statement, as it stood when the result was made)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from registry.models import ModelVersion


def results_json(*, version: ModelVersion, probabilities: np.ndarray) -> dict:
    """The result as returned to the caller and kept in the log (findings in model output order)."""
    findings = []
    for name, probability in zip(version.class_names, probabilities, strict=True):
        threshold = version.threshold_for(name)
        probability = float(probability)
        findings.append(
            {
                "name": name,
                "probability": probability,
                "threshold": threshold,
                "positive": probability >= threshold,
            }
        )
    return {
        "model": {
            "id": version.pk,
            "version_name": version.version_name,
            "sha256": version.sha256,
            "untrained": bool(version.untrained),
        },
        "findings": findings,
        "untrained": bool(version.untrained),
        "honesty": version.honesty(),
    }
