"""What the reader of a result must know about the model before reading its numbers, in one place
for every object lungsite sends (SR, parametric maps, secondary captures, FHIR)."""

from __future__ import annotations

from audit.models import Prediction


def honesty_statement(prediction: Prediction) -> str:
    """The statement recorded with the prediction by the analysis core (results_json["honesty"],
    {"state", "statement"}) when it has one; otherwise the one the registry gives for the version
    that made it, at the time it made it."""
    recorded = (prediction.results_json or {}).get("honesty")
    if isinstance(recorded, dict) and recorded.get("statement"):
        return str(recorded["statement"])
    name = prediction.recorded_model["version_name"]
    if prediction.untrained:
        return (
            f"UNTRAINED MODEL: version {name} has random weights; its outputs carry no medical "
            "meaning. Not for diagnosis."
        )
    version = prediction.model
    # The registry's own rule (ModelVersion.honesty_warning): no measured evaluation when it ran.
    if version.honesty_warning(at=prediction.created_at) is not None:
        return (
            f"NOT EVALUATED: version {name} had no measured evaluation (AUROC) when it made this result. "
            "For research; not for diagnosis."
        )
    if version.accuracy_auroc is not None:
        return (
            f"Model version {name}, mean AUROC {version.accuracy_auroc:.3f} as recorded in the registry. "
            "Decision support for research; not a medical device."
        )
    return f"Model version {name}, per-finding AUROC recorded in the registry. Not a medical device."
