import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers

from common.api_errors import error_body
from common.metrics import refusal_counted

logger = logging.getLogger(__name__)

UNAVAILABLE_MESSAGE = "The database is unreachable; lungsite will recover by itself when it is back."


class ServiceUnavailableMiddleware:
    """Turns a lost database connection into a clear 503 instead of a 500.

    Django opens a fresh connection on the next request (CONN_HEALTH_CHECKS), so nothing else is
    needed to recover when the database returns.
    """

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        return self.get_response(request)

    def process_exception(self, request, exception):
        # Every OperationalError counts, not only a lost connection: SQLite's "database is locked"
        # is one too, and it also means "try again later". IntegrityError and the like stay 500s.
        if not isinstance(exception, (OperationalError, InterfaceError)):
            return None
        return database_unavailable(request, exception)


def database_unavailable(request, exception: Exception) -> HttpResponse:
    """The 503 for a request the database cannot serve: JSON for the API, plain text for pages."""
    logger.error("database unavailable: %s", exception)
    api = request.path.startswith("/api/") or request.path == "/healthz"
    refusal_counted(door="api" if api else "page", code="database_unavailable", status=503)
    if api:
        return JsonResponse(error_body("database_unavailable", UNAVAILABLE_MESSAGE), status=503)
    return HttpResponse(UNAVAILABLE_MESSAGE, status=503, content_type="text/plain")


class PrivateResponsesMiddleware:
    """Keeps what a signed-in user saw out of the browser's caches, for shared workstations.

    - Every response to an authenticated request, and every API response, that does not set its own
      Cache-Control gets `no-store` (Django's never-cache headers): Back after logging out then asks
      the server again and lands on the login page instead of showing an X-ray from the cache. The
      X-ray and heatmap responses set their own `private, max-age=...` (short; the viewer fetches
      them again while switching findings).
    - Logging out answers `Clear-Site-Data: "cache"`, which drops those images too.
    Placed after AuthenticationMiddleware (it reads request.user)."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        # Read before the view runs: the logout view replaces request.user with an anonymous one.
        # Reading it loads the session's user, which is the first query of a page: outside the
        # views, so a database that is down is answered here (ServiceUnavailableMiddleware only
        # sees the views' exceptions).
        try:
            authenticated = request.user.is_authenticated
        except (OperationalError, InterfaceError) as exc:
            return database_unavailable(request, exc)
        response = self.get_response(request)
        if (authenticated or request.path.startswith("/api/")) and not response.has_header("Cache-Control"):
            add_never_cache_headers(response)
        if request.path == reverse("logout") and request.method == "POST":
            add_never_cache_headers(response)
            response["Clear-Site-Data"] = '"cache"'
        return response
