"""The audit log's filter form, and the findings summaries that the list and result pages show.
The queries behind them are in audit.selectors."""

from django import forms

from audit.selectors import finding_names
from registry.models import ModelVersion


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
                # Preformatted: they go into CSS widths, where a localised comma would break.
                "percent": f"{probability * 100:.1f}",
                "threshold_percent": f"{threshold * 100:.1f}",
            }
        )
    rows.sort(key=lambda row: row["probability"], reverse=True)
    return rows


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
