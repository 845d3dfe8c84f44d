"""What a prediction must say about the version that made it (untrained, not evaluated, ...), for
the pages: Prediction.honesty as recorded by the analysis core, and the words the draft report line
uses for each state."""

from __future__ import annotations

from audit.models import Prediction

# How the draft report line qualifies the version, per state; any other state reads "not validated"
# (lungsite is not a medical device: no version of it is clinically validated).
REPORT_QUALIFIERS = {
    "untrained": "UNTRAINED, random weights: scores meaningless",
    "not_evaluated": "not evaluated",
}


def prediction_honesty(prediction: Prediction) -> dict | None:
    """{"state", "statement"} of `prediction` (Prediction.honesty), or None when there is nothing
    to warn about."""
    honesty = prediction.honesty
    return honesty if honesty.get("statement") else None


def report_qualifier(honesty: dict | None) -> str:
    return REPORT_QUALIFIERS.get((honesty or {}).get("state", ""), "not validated")
