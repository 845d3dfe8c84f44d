"""What the reader of a result must know about the model before reading its numbers, in one place
for every object lungsite sends (SR, parametric maps, secondary captures, FHIR)."""

from __future__ import annotations

from audit.models import Prediction
from registry.models import Evaluation


def honesty_statement(prediction: Prediction) -> str:
    """The statement the analysis core recorded with the prediction (Prediction.honesty: untrained,
    not evaluated, not validated, outside what the version was evaluated on); for a version with
    nothing to warn about, the figures of the evaluation in force when the result was made and that
    it is not a medical device. Objects sent to a PACS always carry one of these."""
    name = prediction.recorded_model["version_name"]
    honesty = prediction.honesty
    if honesty.get("statement"):
        return f"{honesty['statement']} (Version {name}.) Not for diagnosis."
    evaluation = Evaluation.objects.filter(pk=honesty.get("evaluation_id")).first()
    if evaluation is None or evaluation.mean_auroc is None:
        return (
            f"Model version {name}. Decision support for research; not a medical device. Not for diagnosis."
        )
    ci = evaluation.mean_auroc_ci
    interval = f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    return (
        f"Model version {name}, mean AUROC {evaluation.mean_auroc:.3f}{interval} on "
        f"{evaluation.evaluation_set} (held out). Decision support for research; not a medical device. "
        "Not for diagnosis."
    )
