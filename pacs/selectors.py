from django.db.models import Case, F, IntegerField, Prefetch, QuerySet, Value, When

from pacs.keys import accession_key
from pacs.models import ReceivedInstance, ResultObject

ORDERS = {"abnormal": "Abnormal first", "newest": "Newest first"}
DEFAULT_ORDER = "abnormal"
STATES = dict(ReceivedInstance.STATE_CHOICES)


def worklist_rows(
    *, order: str = DEFAULT_ORDER, state: str = "", positive: bool = False, accession: str = ""
) -> QuerySet[ReceivedInstance]:
    """Received instances for the worklist with their result objects.

    "abnormal": studies with a positive finding (top_margin >= 0) first, newest first within each
    group, so a new abnormal study is at the top and an old one does not stay there for good;
    "newest": by time alone. Filters: a state, positive studies only, an accession number."""
    rows = ReceivedInstance.objects.select_related("prediction__model").prefetch_related(
        Prefetch("results", queryset=ResultObject.objects.order_by("id"))
    )
    rows = rows.defer("prediction__heatmaps", "prediction__heatmap_data")
    if state in STATES:
        rows = rows.filter(state=state)
    if positive:
        rows = rows.filter(top_margin__gte=0)
    if accession.strip():
        rows = rows.filter(accession_key=accession_key(accession))
    if order == "abnormal":
        abnormal = Case(When(top_margin__gte=0, then=Value(0)), default=Value(1), output_field=IntegerField())
        return rows.order_by(abnormal, F("received_at").desc(), "-id")
    return rows.order_by("-received_at", "-id")
