"""Reads of clinician feedback: the latest mark per (prediction, finding) is the label."""

from __future__ import annotations

from django.db.models import OuterRef, QuerySet, Subquery

from audit.models import FindingLabel, Prediction


def finding_labels_latest(*, prediction: Prediction | None = None) -> QuerySet[FindingLabel]:
    """The marks that are the labels now: for each (prediction, finding), the one written last."""
    newest = (
        FindingLabel.objects.filter(prediction=OuterRef("prediction"), finding=OuterRef("finding"))
        .order_by("-id")
        .values("id")[:1]
    )
    queryset = FindingLabel.objects.filter(id=Subquery(newest)).select_related("prediction", "user")
    if prediction is not None:
        queryset = queryset.filter(prediction=prediction)
    return queryset.order_by("prediction_id", "finding")


def finding_labels_history(*, prediction: Prediction) -> QuerySet[FindingLabel]:
    """Every mark on the prediction, newest first (the trail behind the labels)."""
    return FindingLabel.objects.filter(prediction=prediction).select_related("user").order_by("-id")


def finding_labels_by_prediction(prediction_ids) -> dict[int, dict[str, str]]:
    """{prediction id: {finding: value}} of the current labels, for the audit log and its CSV:
    one query for a page of rows."""
    result: dict[int, dict[str, str]] = {}
    for mark in finding_labels_latest().filter(prediction_id__in=list(prediction_ids)):
        result.setdefault(mark.prediction_id, {})[mark.finding] = mark.value
    return result


def feedback_csv_cell(labels: dict[str, str]) -> str:
    """One audit-CSV cell for a prediction's labels, e.g. "Edema=present; Mass=absent"."""
    return "; ".join(f"{finding}={value}" for finding, value in sorted(labels.items()))
