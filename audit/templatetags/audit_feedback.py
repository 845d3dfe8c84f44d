"""`{% feedback_form prediction findings %}`: the feedback form of the result page, with its current
labels, in the order of the page's findings table (`findings`, as audit.filters.findings_ranked
gives them; the stored order when omitted)."""

from django import template

from audit.label_selectors import finding_labels_latest
from audit.models import FindingLabel

register = template.Library()


@register.inclusion_tag("audit/_feedback.html", takes_context=True)
def feedback_form(context, prediction, findings=None):
    latest = {mark.finding: mark for mark in finding_labels_latest(prediction=prediction)}
    names = [finding["name"] for finding in findings or (prediction.results_json or {}).get("findings", [])]
    rows = [{"name": name, "label": name.replace("_", " "), "mark": latest.get(name)} for name in names]
    return {
        "prediction": prediction,
        "rows": rows,
        "choices": FindingLabel.VALUE_CHOICES,
        "csrf_token": context.get("csrf_token"),
        "messages": context.get("messages"),
    }
