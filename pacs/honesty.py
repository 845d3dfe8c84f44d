"""What the reader of a result must know about the model before reading its numbers, in one place
for every object lungsite sends (SR, parametric maps, secondary captures, FHIR)."""

from __future__ import annotations

from audit.models import Prediction


def honesty_statement(prediction: Prediction) -> str:
    """The statement the analysis core recorded with the prediction (Prediction.honesty: untrained,
    not evaluated, ...); for a version with nothing to warn about, what it is and that it is not a
    medical device. Objects sent to a PACS always carry one of these."""
    statement = prediction.honesty_statement
    if statement:
        return statement
    name = prediction.recorded_model["version_name"]
    auroc = prediction.model.accuracy_auroc
    if auroc is not None:
        return (
            f"Model version {name}, mean AUROC {auroc:.3f} as recorded in the registry. "
            "Decision support for research; not a medical device. Not for diagnosis."
        )
    return f"Model version {name}. Decision support for research; not a medical device. Not for diagnosis."
