"""The audit log's filters, and the findings summaries that the list and result pages show."""

from datetime import date

from django import forms
from django.db.models import Q, QuerySet

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


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


def finding_names() -> list[str]:
    """Every finding any registered version reports, in first-seen order (the CSV columns)."""
    names: dict[str, None] = {}
    for class_names in ModelVersion.objects.order_by("id").values_list("class_names", flat=True):
        names.update(dict.fromkeys(class_names or []))
    return list(names) or list(DEFAULT_CLASS_NAMES)


class AuditFilterForm(forms.Form):
    date_from = forms.DateField(required=False, label="From", widget=forms.DateInput(attrs={"type": "date"}))
    date_to = forms.DateField(required=False, label="To", widget=forms.DateInput(attrs={"type": "date"}))
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


def _positive(finding: str) -> Q | None:
    # Findings are stored in the model's output order, so a finding sits at the same index in every
    # row of one version: an index lookup works on SQLite and Postgres alike (JSON `contains` does
    # not exist on SQLite). The name is checked too, so a row never matches by position alone.
    condition = None
    for version_id, class_names in ModelVersion.objects.values_list("id", "class_names"):
        if finding not in (class_names or []):
            continue
        index = class_names.index(finding)
        one = Q(
            model_id=version_id,
            **{
                f"results_json__findings__{index}__name": finding,
                f"results_json__findings__{index}__positive": True,
            },
        )
        condition = one if condition is None else condition | one
    return condition


def predictions_owned_by(queryset: QuerySet[Prediction], *, user) -> QuerySet[Prediction]:
    """Only `user`'s own rows (the history page), whatever else `user` may see."""
    return queryset.filter(user=user).select_related("model", "user")


def predictions_filter(
    queryset: QuerySet[Prediction],
    *,
    date_from: date | None = None,
    date_to: date | None = None,
    user: str = "",
    model: ModelVersion | None = None,
    finding: str = "",
) -> QuerySet[Prediction]:
    """The rows of `queryset` that pass every given filter (dates inclusive, in TIME_ZONE)."""
    if date_from:
        queryset = queryset.filter(created_at__date__gte=date_from)
    if date_to:
        queryset = queryset.filter(created_at__date__lte=date_to)
    if user:
        queryset = queryset.filter(user__username=user.strip())
    if model:
        queryset = queryset.filter(model=model)
    if finding:
        positive = _positive(finding)
        queryset = queryset.filter(positive) if positive is not None else queryset.none()
    return queryset.select_related("model", "user")
