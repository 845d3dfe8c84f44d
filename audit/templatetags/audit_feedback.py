"""`{% feedback_form prediction %}`: the feedback form of the result page, with its current labels."""

from django import template

from audit.label_selectors import finding_labels_latest
from audit.models import FindingLabel

register = template.Library()


@register.inclusion_tag("audit/_feedback.html", takes_context=True)
def feedback_form(context, prediction):
    latest = {mark.finding: mark for mark in finding_labels_latest(prediction=prediction)}
    rows = [
        {
            "name": finding["name"],
            "label": finding["name"].replace("_", " "),
            "mark": latest.get(finding["name"]),
        }
        for finding in (prediction.results_json or {}).get("findings", [])
    ]
    return {
        "prediction": prediction,
        "rows": rows,
        "choices": FindingLabel.VALUE_CHOICES,
        "csrf_token": context.get("csrf_token"),
    }
