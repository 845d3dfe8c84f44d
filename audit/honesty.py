"""What a prediction must say about the version that made it (untrained, not evaluated, ...): one
reader for every page. The analysis records `results_json["honesty"] = {"state", "statement"}` when
it runs; rows written before that get the registry's rule for the version at the prediction's time."""

from __future__ import annotations

from audit.models import Prediction

# How the draft report line qualifies the version, per state; any other state reads "not validated"
# (lungsite is not a medical device: no version of it is clinically validated).
REPORT_QUALIFIERS = {
    "untrained": "UNTRAINED, random weights: scores meaningless",
    "not_evaluated": "not evaluated",
}


def prediction_honesty(prediction: Prediction) -> dict | None:
    """{"state", "statement"} of `prediction`, or None when there is nothing to warn about."""
    recorded = (prediction.results_json or {}).get("honesty")
    if isinstance(recorded, dict):
        statement = str(recorded.get("statement") or "").strip()
        return {"state": str(recorded.get("state") or ""), "statement": statement} if statement else None
    from registry.models import UNTRAINED_WARNING

    if prediction.untrained:
        return {"state": "untrained", "statement": UNTRAINED_WARNING}
    warning = prediction.model.honesty_warning(at=prediction.created_at)
    if warning is None:
        return None
    state = "untrained" if warning == UNTRAINED_WARNING else "not_evaluated"
    return {"state": state, "statement": warning}


def report_qualifier(honesty: dict | None) -> str:
    return REPORT_QUALIFIERS.get((honesty or {}).get("state", ""), "not validated")
