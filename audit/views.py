import hashlib
import json
from collections.abc import Iterator
from contextlib import closing

from django.contrib.auth.decorators import login_required, permission_required
from django.db.models import TextField
from django.db.models.functions import Cast
from django.http import Http404, HttpResponse, HttpResponseBadRequest, StreamingHttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_GET

from audit import selectors
from audit.filters import AuditFilterForm, findings_ranked
from audit.models import Prediction
from audit.pagination import keyset_page
from audit.streaming import rows_streamed
from common.csv_export import CsvBuffer, plain_tail

HISTORY_PAGE_SIZE = 25
AUDIT_PAGE_SIZE = 50
CSV_LINES_PER_CHUNK = 500  # lines per piece of the response


def _page_with_top_findings(request, queryset, per_page: int):
    page = keyset_page(
        queryset.defer("heatmaps", "heatmap_data"),
        per_page=per_page,
        before=request.GET.get("before"),
        after=request.GET.get("after"),
    )
    for prediction in page:
        prediction.top_findings = findings_ranked(prediction.results_json)[:3]
    return page


@require_GET
@login_required
def history(request):
    own = selectors.prediction_list_for(user=request.user)
    own = selectors.predictions_owned_by(own, user=request.user)
    page = _page_with_top_findings(request, own, HISTORY_PAGE_SIZE)
    return render(request, "audit/history.html", {"page": page, "query": ""})


@require_GET
@login_required
@permission_required("audit.view_all_predictions", raise_exception=True)
def audit_log(request):
    form = AuditFilterForm(request.GET)
    rows = selectors.prediction_list_for(user=request.user)
    # Every filter is optional, so only a malformed one (a bad date) makes the form invalid: that
    # is a 400 saying what was wrong, never an empty export that looks complete.
    valid = form.is_valid()
    if not valid and request.GET.get("format") == "csv":
        return HttpResponseBadRequest(_form_errors(form), content_type="text/plain; charset=utf-8")
    rows = selectors.predictions_filter(rows, **form.cleaned_data) if valid else rows.none()

    if request.GET.get("format") == "csv":
        return _csv_response(rows)

    query = request.GET.copy()
    for key in ("page", "format", "before", "after"):
        query.pop(key, None)
    context = {
        "form": form,
        "page": _page_with_top_findings(request, rows, AUDIT_PAGE_SIZE),
        "query": query.urlencode(),
        "filtered": any(value for key, value in query.items()),
        "valid": valid,
    }
    return render(request, "audit/audit_log.html", context, status=200 if valid else 400)


def _form_errors(form: AuditFilterForm) -> str:
    labels = {name: field.label for name, field in form.fields.items()}
    lines = [f"{labels.get(name, 'Filters')}: {' '.join(errors)}" for name, errors in form.errors.items()]
    return "The audit filters are not valid, so nothing was exported.\n" + "\n".join(lines) + "\n"


@require_GET
@login_required
def thumbnail(request, pk: int):
    """A small JPEG of the analysed image for the history and audit lists (rendered once, kept)."""
    from audit.services import StorageUnavailable, thumbnail_jpeg

    try:
        prediction = selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No such prediction.") from None
    try:
        data = thumbnail_jpeg(prediction=prediction)
    except (StorageUnavailable, FileNotFoundError):
        return HttpResponse("The stored image is unavailable.", status=503, content_type="text/plain")
    response = HttpResponse(data, content_type="image/jpeg")
    response["Cache-Control"] = "private, max-age=300"
    return response


_CSV_FIELDS = (
    "id",
    "created_at",
    "user__username",
    "source",
    "model__version_name",
    "model__sha256",
    "latency_ms",
    "file_name",
    "image_sha256",
    "results_text",
)


def _csv_header(names: tuple[str, ...]) -> list[str]:
    columns = ["id", "created_at", "user", "source", "model_version", "model_sha256", "untrained"]
    columns += ["latency_ms", "file_name", "image_sha256"]
    for name in names:
        columns += [name, f"{name} threshold", f"{name} positive"]
    return columns


# Numbers stay the text the database keeps: written as stored, not converted to numbers and back
# for every cell. One decoder for every row (json.loads with options makes one per call).
_results_decode = json.JSONDecoder(parse_float=str, parse_int=str).decode


def _csv_row(values: tuple, names: tuple[str, ...]) -> tuple[list, list]:
    """The row's leading cells and its finding cells (probability, threshold, positive per name)."""
    pk, created_at, username, source, version_name, model_sha256, latency_ms, file_name, sha256, results = (
        values
    )
    results = _results_decode(results) if results else {}
    leading = [
        pk,
        created_at.isoformat(),
        username or "",
        source,
        version_name,
        model_sha256,
        "yes" if results.get("untrained") or (results.get("model") or {}).get("untrained") else "no",
        "" if latency_ms is None else round(latency_ms, 1),
        file_name,
        sha256,
    ]
    row = []
    findings = results.get("findings") or []
    try:
        # The engine writes every finding of the version, in its order: usually the columns' order.
        if tuple([finding["name"] for finding in findings]) == names:
            for finding in findings:
                row += (finding["probability"], finding["threshold"], "yes" if finding["positive"] else "no")
            return leading, row
    except (KeyError, TypeError):
        pass
    by_name = {finding["name"]: finding for finding in findings}
    for name in names:
        finding = by_name.get(name)
        if finding is None:
            row += ("", "", "")
        else:
            row += (
                finding.get("probability", ""),
                finding.get("threshold", ""),
                "yes" if finding.get("positive") else "no",
            )
    return leading, row


def _csv_lines(rows, names: tuple[str, ...]) -> Iterator[str]:
    """The CSV, CSV_LINES_PER_CHUNK lines at a time, ending with the trailer `# end: N rows, sha256 HEX`:
    N data rows and the sha256 of every byte before the trailer. A file without it, or whose bytes
    do not hash to it, was cut off (an export that failed midway). The rows are read in constant
    memory (audit.streaming), the JSON as text, the heatmaps not at all."""
    lines = CsvBuffer()  # formulas escaped (common.csv_export)
    digest = hashlib.sha256()
    count = 0
    lines.writerow(_csv_header(names))
    yield _digested(lines.take(), digest)
    rows = rows.annotate(results_text=Cast("results_json", TextField())).values_list(*_CSV_FIELDS)
    # closing(): a client gone midway ends the query at once (the database must not stream on).
    with closing(rows_streamed(rows)) as streamed:
        for values in streamed:
            leading, cells = _csv_row(values, names)
            # The finding cells are numbers, yes and no: joined without csv.writer when they allow.
            plain = plain_tail(cells)
            if plain is None:
                lines.writerow(leading + cells)
            else:
                lines.writerow_with_tail(leading, plain)
            count += 1
            if count % CSV_LINES_PER_CHUNK == 0:
                yield _digested(lines.take(), digest)
    yield _digested(lines.take(), digest)
    yield f"# end: {count} rows, sha256 {digest.hexdigest()}\r\n"


def _digested(chunk: str, digest) -> str:
    digest.update(chunk.encode())
    return chunk


def _csv_response(rows) -> StreamingHttpResponse:
    names = tuple(selectors.finding_names())
    rows = rows.order_by("-created_at", "-id")
    stamp = timezone.now().strftime("%Y%m%dT%H%M%SZ")
    return StreamingHttpResponse(
        _csv_lines(rows, names),
        content_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": f'attachment; filename="lungsite-audit-{stamp}.csv"'},
    )
