"""Prometheus metrics (prometheus_client): what lungsite counts while it works, and the text a
scrape of /metrics returns (lungsite.views.metrics adds the gauges read at scrape time).

Counted here, in the process that does the work:
- lungsite_http_requests_total{endpoint, method, status} and
  lungsite_http_request_duration_seconds{endpoint, method}: every request (MetricsMiddleware), by
  URL route (`api/v1/predictions/<int:pk>/`, not the id);
- lungsite_predictions_total{version, source}: every prediction row committed (audit.integrity);
- lungsite_refusals_total{door, code, status}: every error mapped to an answer, where it is mapped
  (the API's exception handler, the Django error handlers, the upload page, the database-down 503);
- lungsite_decode_timeouts_total{door}: the refusals whose code is decode_timeout.

Under gunicorn every worker is a process: gunicorn.conf.py points PROMETHEUS_MULTIPROC_DIR at a
folder before the workers start, prometheus_client then keeps the values in files there, and a
scrape adds up every process's (prometheus_client's multiprocess mode). Without it (runserver,
tests) the values live in this process.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily

REQUESTS = Counter(
    "lungsite_http_requests",
    "HTTP requests answered, by URL route, method and status.",
    ["endpoint", "method", "status"],
)
LATENCY = Histogram(
    "lungsite_http_request_duration_seconds",
    "Time to answer an HTTP request, by URL route and method.",
    ["endpoint", "method"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
PREDICTIONS = Counter(
    "lungsite_predictions", "Prediction rows committed, by model version and source.", ["version", "source"]
)
REFUSALS = Counter(
    "lungsite_refusals",
    "Errors answered, by door (api, page, ...), error code and status.",
    ["door", "code", "status"],
)
DECODE_TIMEOUTS = Counter(
    "lungsite_decode_timeouts", "Uploads whose decoding ran out of time, by door.", ["door"]
)

CONTENT_TYPE = CONTENT_TYPE_LATEST
_SKIPPED_PREFIXES = ("/static/",)


def prediction_counted(*, version: str, source: str) -> None:
    PREDICTIONS.labels(version=version, source=source).inc()


def refusal_counted(*, door: str, code: str, status: int) -> None:
    """Called where an error becomes an answer (a response, a page, a job row, a DICOM status)."""
    REFUSALS.labels(door=door, code=code or "error", status=str(status)).inc()
    if code == "decode_timeout":
        DECODE_TIMEOUTS.labels(door=door).inc()


def _endpoint(request) -> str:
    match = getattr(request, "resolver_match", None)
    if match is None:
        return "unmatched"
    return match.route or match.view_name or "unmatched"


class MetricsMiddleware:
    """Counts and times every request by its URL route (first in MIDDLEWARE: it times the rest)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if request.path.startswith(_SKIPPED_PREFIXES):
            return self.get_response(request)
        started = time.perf_counter()
        response = self.get_response(request)
        endpoint = _endpoint(request)
        REQUESTS.labels(endpoint=endpoint, method=request.method, status=str(response.status_code)).inc()
        LATENCY.labels(endpoint=endpoint, method=request.method).observe(time.perf_counter() - started)
        return response


class _Gauges:
    """The gauges read at scrape time, as one collector: {name: (help, value or None)}."""

    def __init__(self, gauges: dict[str, tuple[str, float | None]]):
        self.gauges = gauges

    def collect(self) -> Iterable[GaugeMetricFamily]:
        for name, (help_text, value) in self.gauges.items():
            if value is not None:
                yield GaugeMetricFamily(name, help_text, value=value)


def exposition(gauges: dict[str, tuple[str, float | None]]) -> bytes:
    """The text of a scrape: the counters of every process (multiprocess mode) or of this one, and
    `gauges` (a gauge whose value is None, e.g. a broker that did not answer, is left out)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Process())
    registry.register(_Gauges(gauges))
    return generate_latest(registry)


class _Process:
    """This process's own metrics (single-process mode): the default registry's."""

    def collect(self):
        return REGISTRY.collect()
