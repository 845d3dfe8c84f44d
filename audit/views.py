import csv
from collections.abc import Iterable, Iterator

from django.contrib.auth.decorators import login_required, permission_required
from django.core.paginator import Paginator
from django.http import StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit import selectors
from audit.filters import AuditFilterForm, findings_ranked
from audit.models import Prediction

HISTORY_PAGE_SIZE = 25
AUDIT_PAGE_SIZE = 50


def _page_with_top_findings(request, queryset, per_page: int):
    page = Paginator(queryset, per_page).get_page(request.GET.get("page"))
    for prediction in page:
        ranked = findings_ranked(prediction.results_json)
        prediction.top_findings = ranked[:3]
    return page


@require_GET
@login_required
def history(request):
    own = selectors.prediction_list_for(user=request.user)
    own = selectors.predictions_owned_by(own, user=request.user)
    page = _page_with_top_findings(request, own, HISTORY_PAGE_SIZE)
    return render(request, "audit/history.html", {"page": page})


@require_GET
@login_required
@permission_required("audit.view_all_predictions", raise_exception=True)
def audit_log(request):
    form = AuditFilterForm(request.GET)
    rows = selectors.prediction_list_for(user=request.user)
    # Every filter is optional, so only a malformed one (a bad date) makes the form invalid.
    rows = selectors.predictions_filter(rows, **form.cleaned_data) if form.is_valid() else rows.none()

    if request.GET.get("format") == "csv":
        return _csv_response(rows)

    query = request.GET.copy()
    query.pop("page", None)
    query.pop("format", None)
    context = {
        "form": form,
        "page": _page_with_top_findings(request, rows, AUDIT_PAGE_SIZE),
        "query": query.urlencode(),
        "filtered": any(value for key, value in query.items()),
    }
    return render(request, "audit/audit_log.html", context)


class _Echo:
    """A file-like object that hands back what csv.writer writes, for streaming."""

    def write(self, value: str) -> str:
        return value


def _cell(value) -> str | float | int:
    # A cell starting with = + - @ is a formula to a spreadsheet; usernames may start with them.
    if isinstance(value, str) and value[:1] in ("=", "+", "-", "@", "\t", "\r"):
        return "'" + value
    return value


def _csv_rows(rows: Iterable[Prediction], names: list[str]) -> Iterator[list]:
    yield [
        "id",
        "created_at",
        "user",
        "source",
        "model_version",
        "model_sha256",
        "latency_ms",
        "image_sha256",
        *names,
    ]
    for prediction in rows:
        probabilities = {
            finding["name"]: finding["probability"] for finding in prediction.results_json.get("findings", [])
        }
        yield [
            prediction.pk,
            prediction.created_at.isoformat(),
            _cell(prediction.user.get_username() if prediction.user else ""),
            prediction.source,
            _cell(prediction.model.version_name),
            prediction.model.sha256,
            "" if prediction.latency_ms is None else round(prediction.latency_ms, 1),
            prediction.image_sha256,
            *(probabilities.get(name, "") for name in names),
        ]


def _csv_response(rows) -> StreamingHttpResponse:
    writer = csv.writer(_Echo())
    names = selectors.finding_names()
    lines = (writer.writerow(row) for row in _csv_rows(rows.iterator(chunk_size=500), names))
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingHttpResponse(
        lines,
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="lungsite-audit-{stamp}.csv"'},
    )
