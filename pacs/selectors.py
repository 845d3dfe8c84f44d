from django.db.models import F, Prefetch, QuerySet

from pacs.models import ReceivedInstance, ResultObject

ORDERS = {"newest": "Newest first", "abnormal": "Most abnormal first"}


def worklist_rows(*, order: str = "newest") -> QuerySet[ReceivedInstance]:
    """Received instances for the worklist with their result objects. "abnormal": the highest
    (probability - threshold) first, so positive findings lead; not analysed ones last."""
    rows = ReceivedInstance.objects.select_related("prediction__model").prefetch_related(
        Prefetch("results", queryset=ResultObject.objects.order_by("id"))
    )
    if order == "abnormal":
        return rows.order_by(F("top_margin").desc(nulls_last=True), "-received_at", "-id")
    return rows.order_by("-received_at", "-id")
