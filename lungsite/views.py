from django.db import DatabaseError
from django.http import JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from lungsite.api_errors import error_body
from registry import selectors


@never_cache
def healthz(request):
    """Liveness and readiness in one, without authentication: 200 with the active version, 503 when
    the database is gone."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(error_body("method_not_allowed", "Use GET."), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    try:
        active = selectors.model_version_get_active()
    except DatabaseError:
        return JsonResponse(
            {
                "status": "unavailable",
                "error": {"code": "database_unavailable", "message": "The database is unreachable."},
            },
            status=503,
        )
    model = None
    if active is not None:
        model = {
            "id": active.pk,
            "version_name": active.version_name,
            "sha256": active.sha256,
            "untrained": active.untrained,
        }
    return JsonResponse({"status": "ok", "model": model})


@csrf_exempt  # it only ever answers 404; a CSRF 403 page would hide that
def api_not_found(request, path: str = ""):
    """Any unknown path under /api/v1/: the JSON 404 of the API, with a hint for a missing slash."""
    message = f"No API endpoint at {request.path}."
    if not request.path.endswith("/"):
        try:
            match = resolve(request.path + "/")
        except Resolver404:
            match = None
        if match is not None and match.func is not api_not_found:
            message += f" Did you mean {request.path}/ (with a trailing slash)?"
    return JsonResponse(error_body("not_found", message), status=404)
