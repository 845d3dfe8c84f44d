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
        row.delivery = _delivery(list(row.results.all()))
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


def _delivery(results: list) -> dict:
    """One line for the worklist of the row's result objects: how many, in which states, the next
    try and the latest error (each object stays listed under it)."""
    pending = [r for r in results if r.state == "pending"]
    errors = [r.last_error for r in results if r.last_error]
    return {
        "total": len(results),
        "sent": sum(1 for r in results if r.state == "sent"),
        "pending": len(pending),
        "failed": sum(1 for r in results if r.state == "failed"),
        "attempts": max((r.attempts for r in results), default=0),
        "next_try": min((r.next_try_at for r in pending), default=None),
        "error": errors[0] if errors else "",
    }


def _without(query, key: str) -> str:
    query = query.copy()
    query.pop(key, None)
    return query.urlencode()
