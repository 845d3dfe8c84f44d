import logging

from django.db import InterfaceError, OperationalError
from django.http import HttpResponse, JsonResponse

from lungsite.api_errors import error_body

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
        logger.error("database unavailable: %s", exception)
        if request.path.startswith("/api/") or request.path == "/healthz":
            return JsonResponse(error_body("database_unavailable", UNAVAILABLE_MESSAGE), status=503)
        return HttpResponse(UNAVAILABLE_MESSAGE, status=503, content_type="text/plain")
