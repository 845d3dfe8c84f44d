from django.db import DatabaseError
from django.http import JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from registry import selectors


@never_cache
@require_GET
def healthz(request):
    """Liveness and readiness in one: 200 with the active version, 503 when the database is gone."""
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
