import logging

from django.core.files.storage import storages
from django.db import DatabaseError
from django.http import JsonResponse
from django.urls import Resolver404, resolve
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt

from lungsite.api_errors import error_body
from lungsite.supabase_storage import STORAGE_ERRORS
from registry import selectors
from registry.serializers import ModelVersionSummarySerializer

logger = logging.getLogger(__name__)

# An object name that is never written: asking for it checks that the storage answers.
HEALTHZ_OBJECT = "healthz-probe"


@never_cache
def healthz(request):
    """Liveness and readiness in one, without authentication: what is up and what is down, as JSON.

    `checks` names each dependency: `database` and `storage` ("ok" or "unavailable"; either down
    gives a 503), and `model` ("ok", or "none_active" when nothing can serve predictions yet)."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(error_body("method_not_allowed", "Use GET."), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    checks, model, errors = {}, None, []
    try:
        active = selectors.model_version_get_active()
    except DatabaseError as exc:
        logger.error("healthz: database unavailable: %s", exc)
        checks["database"] = checks["model"] = "unavailable"
        errors.append(("database_unavailable", "The database is unreachable."))
    else:
        checks["database"] = "ok"
        checks["model"] = "ok" if active is not None else "none_active"
        model = ModelVersionSummarySerializer(active).data if active is not None else None
    try:
        # A lookup, not a write: cheap on local files, one request to Supabase Storage.
        storages["xray_images"].exists(HEALTHZ_OBJECT)
    except STORAGE_ERRORS as exc:
        logger.error("healthz: image storage unavailable: %s", exc)
        checks["storage"] = "unavailable"
        errors.append(("storage_unavailable", "The image storage is unreachable."))
    else:
        checks["storage"] = "ok"
    if errors:
        code, message = errors[0]
        body = {
            "status": "unavailable",
            "checks": checks,
            "model": model,
            "error": {"code": code, "message": " ".join(text for _, text in errors)},
        }
        return JsonResponse(body, status=503)
    return JsonResponse({"status": "ok", "checks": checks, "model": model})


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
