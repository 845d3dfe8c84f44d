"""From a model's outputs to the result returned with a prediction and kept in the log: each
finding's served score (calibrated where the version has a calibration), its threshold and whether
it is positive, the version that produced it, what every output of it must say about that version
(its honesty statement, with the evaluation in force, as it stood when the result was made), how
far the image lies from what that evaluation measured, and what kind of input it was."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from registry.models import ModelVersion


def results_json(
    *,
    version: ModelVersion,
    probabilities: np.ndarray,
    calibrated: list[bool] | None = None,
    honesty: dict | None = None,
    ood: dict | None = None,
    input_facts: dict | None = None,
) -> dict:
    """The result as returned to the caller and kept in the log (findings in model output order).
    `probabilities` are the served scores; `calibrated[k]` says whether finding k's is a calibrated
    probability (else it is a score); `honesty` is version.honesty() for this image (looked up when
    not given)."""
    calibrated = calibrated if calibrated is not None else [False] * len(version.class_names)
    findings = []
    for name, probability, is_calibrated in zip(version.class_names, probabilities, calibrated, strict=True):
        threshold = version.threshold_for(name)
        probability = float(probability)
        findings.append(
            {
                "name": name,
                "probability": probability,
                "threshold": threshold,
                "positive": probability >= threshold,
                "calibrated": bool(is_calibrated),
            }
        )
    result = {
        "model": {
            "id": version.pk,
            "version_name": version.version_name,
            "sha256": version.sha256,
            "untrained": bool(version.untrained),
            "precision": version.precision,
        },
        "findings": findings,
        "untrained": bool(version.untrained),
        "honesty": honesty if honesty is not None else version.honesty(ood=ood),
        "calibration": {
            "calibrated": any(calibrated),
            "method": (version.calibration or {}).get("method") if any(calibrated) else None,
            "fitted_at": (version.calibration or {}).get("fitted_at") if any(calibrated) else None,
        },
    }
    if ood is not None:
        result["ood"] = ood
    if input_facts is not None:
        result["input"] = input_facts
    return result
