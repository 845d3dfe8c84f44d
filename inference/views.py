from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from audit import selectors
from audit.filters import findings_ranked
from audit.models import Prediction
from inference import services
from inference.forms import ACCEPT, UploadForm
from registry.selectors import model_version_get_active


def _wants_json(request) -> bool:
    # static/js/upload.js sends this header; a plain form post (no JavaScript) gets HTML.
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


def _upload_page(request, form, *, error=None, status=200):
    if error and _wants_json(request):
        return JsonResponse({"error": error}, status=status)
    context = {
        "form": form,
        "accept": ACCEPT,
        "active": model_version_get_active(),
        "max_upload_mb": settings.LUNGSITE_MAX_UPLOAD_MB,
        "error": error,
        "status": status,
    }
    return render(request, "inference/upload.html", context, status=status)


def _landing_for(user) -> str | None:
    """Where `/` sends someone who may not analyse X-rays: the page of the role they do have."""
    if user.has_perm("audit.view_all_predictions"):
        return reverse("audit")
    if user.is_staff and user.has_perm("registry.view_modelversion"):
        return reverse("admin:index")
    return None


@require_http_methods(["GET", "POST"])
@login_required
def upload(request):
    if not request.user.has_perm("audit.add_prediction"):
        # `/` is where the login form lands everyone: auditors and model-admins go on to their own
        # page. A refused upload (POST) stays a 403, and so does an account without any role.
        landing = _landing_for(request.user) if request.method == "GET" else None
        if landing is None:
            raise PermissionDenied
        return redirect(landing)
    if request.method != "POST":
        return _upload_page(request, UploadForm())

    form = UploadForm(request.POST, request.FILES)
    if not form.is_valid():
        message = " ".join(form.errors.get("image", ["The upload is not valid."]))
        # "invalid", as the API answers a request without a usable `image` field.
        return _upload_page(request, form, error={"code": "invalid", "message": message}, status=400)

    try:
        prediction = services.prediction_create(
            upload=form.cleaned_data["image"], user=request.user, source=Prediction.SOURCE_WEB
        )
    except services.PredictionRefused as exc:
        error = {"code": exc.code, "message": str(exc)}
        return _upload_page(request, UploadForm(), error=error, status=exc.status)
    except services.PredictionUnavailable as exc:
        error = {"code": exc.code, "message": str(exc)}
        return _upload_page(request, UploadForm(), error=error, status=503)

    url = reverse("prediction-detail", args=[prediction.pk])
    if _wants_json(request):
        return JsonResponse({"id": prediction.pk, "redirect": url}, status=201)
    return redirect(url)


@require_GET
@login_required
def prediction_detail(request, pk: int):
    try:
        prediction = selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No prediction with this id is visible to you.") from None

    findings = findings_ranked(prediction.results_json)
    for finding in findings:
        finding["heatmap_url"] = reverse("api-prediction-heatmap", args=[prediction.pk, finding["name"]])
    names = [finding["name"] for finding in findings]
    # The top finding first; ?heatmap=Name picks another (the selector without JavaScript).
    selected = request.GET.get("heatmap") if request.GET.get("heatmap") in names else None
    selected = next((f for f in findings if f["name"] == selected), findings[0] if findings else None)
    recorded = prediction.recorded_model
    context = {
        "prediction": prediction,
        "findings": findings,
        "selected": selected,
        "positives": sum(1 for finding in findings if finding["positive"]),
        "untrained": prediction.untrained,
        "version_name": recorded["version_name"],
        "model_sha256": recorded["sha256"],
        "image_url": reverse("api-prediction-image", args=[prediction.pk]),
    }
    return render(request, "inference/result.html", context)
