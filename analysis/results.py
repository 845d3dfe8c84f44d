"""From a model's probabilities to the findings returned with a prediction: each finding's
threshold, and whether it is positive. The audit log stores this result as it was returned."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from registry.models import ModelVersion


def results_json(*, version: ModelVersion, probabilities: np.ndarray) -> dict:
    """The findings as returned to the caller and kept in the log (model output order)."""
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
    }
