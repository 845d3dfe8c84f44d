"""The audit log's filter form, and the findings summaries that the list and result pages show.
The queries behind them are in audit.selectors."""

import math

from django import forms

from audit.selectors import finding_names
from registry.models import ModelVersion

# A finding whose score is within this many points (of 100) of its threshold is borderline: its
# positive/negative mark could flip on a small change of the image (docs/viewer.md).
BORDERLINE_POINTS = 5


def score_text(probability: float) -> str:
    """A probability as the 0-100 score the pages print: whole points, never "100" or "0" for a
    value that is not exactly 1 or 0 (">99", "<1")."""
    points = probability * 100.0
    if 0.0 < points < 0.5:
        return "<1"
    if 99.5 <= points < 100.0:
        return ">99"
    return str(math.floor(points + 0.5))


def findings_ranked(results: dict) -> list[dict]:
    """The findings of a `results_json`, highest probability first, with what a page prints."""
    rows = []
    for finding in results.get("findings", []):
        probability = float(finding.get("probability", 0.0))
        threshold = float(finding.get("threshold", 0.5))
        rows.append(
            {
                "name": finding["name"],
                "label": finding["name"].replace("_", " "),
                "probability": probability,
                "threshold": threshold,
                "positive": bool(finding.get("positive", probability >= threshold)),
                "score": score_text(probability),
                "threshold_score": score_text(threshold),
                "borderline": abs(probability - threshold) * 100.0 < BORDERLINE_POINTS,
                # Preformatted: they go into CSS widths, where a localised comma would break.
                "percent": f"{probability * 100:.1f}",
                "threshold_percent": f"{threshold * 100:.1f}",
            }
        )
    rows.sort(key=lambda row: row["probability"], reverse=True)
    return rows


def finding_top(findings: list[dict]) -> dict | None:
    """The case's top finding: the one furthest above its threshold (or, when none is positive,
    the closest below it), so thresholds that differ per finding are compared fairly."""
    return max(findings, key=lambda f: f["probability"] - f["threshold"], default=None)


_ISO_DATE = {
    "placeholder": "YYYY-MM-DD",
    "pattern": r"\d{4}-\d{2}-\d{2}",
    "inputmode": "numeric",
    "autocomplete": "off",
    "size": 10,
}


class AuditFilterForm(forms.Form):
    # ISO dates, typed: a native <input type="date"> shows the browser's locale format (03/12/2026),
    # which would not match the table's YYYY-MM-DD.
    date_from = forms.DateField(
        required=False,
        label="From (YYYY-MM-DD)",
        input_formats=["%Y-%m-%d"],
        widget=forms.DateInput(format="%Y-%m-%d", attrs=_ISO_DATE),
    )
    date_to = forms.DateField(
        required=False,
        label="To (YYYY-MM-DD)",
        input_formats=["%Y-%m-%d"],
        widget=forms.DateInput(format="%Y-%m-%d", attrs=_ISO_DATE),
    )
    user = forms.CharField(
        required=False,
        label="User",
        max_length=150,
        widget=forms.TextInput(attrs={"placeholder": "username", "autocomplete": "off"}),
    )
    model = forms.ModelChoiceField(
        queryset=ModelVersion.objects.order_by("-created_at", "-id"),
        required=False,
        label="Model version",
        empty_label="Any version",
    )
    finding = forms.ChoiceField(required=False, label="Positive finding")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["finding"].choices = [("", "Any finding")] + [
            (name, name.replace("_", " ")) for name in finding_names()
        ]

    def clean(self):
        cleaned = super().clean()
        start, end = cleaned.get("date_from"), cleaned.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return cleaned
