from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.views.decorators.http import require_GET

from audit.filters import finding_top, findings_ranked
from pacs import selectors

WORKLIST_PAGE_SIZE = 50


@require_GET
@login_required
# The rows link to the result pages of PACS predictions (no user of their own), which the audit
# log's readers may open.
@permission_required("audit.view_all_predictions", raise_exception=True)
def worklist(request):
    order = request.GET.get("order", selectors.DEFAULT_ORDER)
    if order not in selectors.ORDERS:
        order = selectors.DEFAULT_ORDER
    state = request.GET.get("state", "")
    state = state if state in selectors.STATES else ""
    positive = request.GET.get("positive") == "1"
    accession = request.GET.get("accession", "").strip()[:16]
    rows = selectors.worklist_rows(order=order, state=state, positive=positive, accession=accession)
    page = Paginator(rows, WORKLIST_PAGE_SIZE).get_page(request.GET.get("page"))
    for row in page:
        row.top = finding_top(findings_ranked(row.prediction.results_json)) if row.prediction else None
    query = request.GET.copy()
    query.pop("page", None)
    context = {
        "page": page,
        "page_range": list(page.paginator.get_elided_page_range(page.number, on_each_side=2, on_ends=1)),
        "order": order,
        "orders": selectors.ORDERS,
        "states": selectors.STATES,
        "state": state,
        "positive": positive,
        "accession": accession,
        "filtered": bool(state or positive or accession),
        # Every link of the page keeps the others' choices.
        "query": query.urlencode(),
        "query_without_order": _without(query, "order"),
    }
    return render(request, "pacs/worklist.html", context)


def _without(query, key: str) -> str:
    query = query.copy()
    query.pop(key, None)
    return query.urlencode()
