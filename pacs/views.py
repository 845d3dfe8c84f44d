from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.shortcuts import render
from django.views.decorators.http import require_GET

from pacs import selectors

WORKLIST_PAGE_SIZE = 50


@require_GET
@login_required
# The rows link to the result pages of PACS predictions (no user of their own), which the audit
# log's readers may open.
@permission_required("audit.view_all_predictions", raise_exception=True)
def worklist(request):
    order = request.GET.get("order", "newest")
    if order not in selectors.ORDERS:
        order = "newest"
    page = Paginator(selectors.worklist_rows(order=order), WORKLIST_PAGE_SIZE).get_page(
        request.GET.get("page")
    )
    return render(request, "pacs/worklist.html", {"page": page, "order": order, "orders": selectors.ORDERS})
