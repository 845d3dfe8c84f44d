"""The drift page for model-admins (/models/drift/) and its pictures. The same figures as JSON:
learning.apis.DriftApi (/api/v1/drift/)."""

from django.contrib.auth.decorators import login_required, permission_required
from django.http import HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from learning.drift import drift_report
from learning.plots import drift_png

MODEL_ADMIN = "registry.change_modelversion"
MAX_WEEKS = 104


def weeks_param(value: str | None, default: int = 12) -> int:
    """?weeks=N, 1 to MAX_WEEKS; anything else is the default."""
    try:
        return min(max(int(value), 1), MAX_WEEKS) if value else default
    except ValueError:
        return default


@require_GET
@login_required
@permission_required(MODEL_ADMIN, raise_exception=True)
def drift_page(request):
    report = drift_report(weeks=weeks_param(request.GET.get("weeks")))
    return render(request, "learning/drift.html", {"report": report})


@require_GET
@login_required
@permission_required(MODEL_ADMIN, raise_exception=True)
def drift_picture(request, version_id: int):
    report = drift_report(weeks=weeks_param(request.GET.get("weeks")), version_id=version_id)
    entry = next((v for v in report["versions"] if v["id"] == version_id), None)
    if entry is None:
        entry = {"version_name": f"version {version_id} (no predictions)", "weeks": [], "reference": None}
    response = HttpResponse(drift_png({**entry, "psi_alert": report["psi_alert"]}), content_type="image/png")
    response["Cache-Control"] = "private, no-store"
    return response
