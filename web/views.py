import secrets
import time

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import PermissionDenied
from django.http import Http404, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from analysis import services
from audit import selectors
from audit.filters import findings_ranked
from audit.models import Prediction
from common import metrics
from engine import heatmaps
from registry.selectors import model_version_get_active
from web.forms import ACCEPT, UploadForm


def _wants_json(request) -> bool:
    # static/js/upload.js sends this header; a plain form post (no JavaScript) gets HTML.
    return request.headers.get("X-Requested-With") == "XMLHttpRequest"


def _upload_page(request, form, *, error=None, status=200):
    if error:
        metrics.refusal_counted(door="page", code=error["code"], status=status)
    if error and _wants_json(request):
        return JsonResponse({"error": error}, status=status)
    context = {
        "form": form,
        "accept": ACCEPT,
        "active": model_version_get_active(),
        "max_upload_mb": settings.LUNGSITE_MAX_UPLOAD_MB,
        "error": error,
        "status": status,
        # One per rendering of the form: a second submit of the same form gets the first's result.
        "nonce": secrets.token_urlsafe(16),
    }
    return render(request, "web/upload.html", context, status=status)


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

    nonce_key = _nonce_key(request)
    if nonce_key and not cache.add(nonce_key, _PENDING, timeout=_NONCE_SECONDS):
        return _repeated_submit(request, nonce_key)
    try:
        prediction = services.prediction_create(
            upload=form.cleaned_data["image"], user=request.user, source=Prediction.SOURCE_WEB
        )
    except services.PredictionRefused as exc:
        _forget(nonce_key)
        error = {"code": exc.code, "message": str(exc)}
        return _upload_page(request, UploadForm(), error=error, status=exc.status)
    except services.PredictionUnavailable as exc:
        _forget(nonce_key)
        error = {"code": exc.code, "message": str(exc)}
        return _upload_page(request, UploadForm(), error=error, status=503)
    except BaseException:
        _forget(nonce_key)
        raise
    if nonce_key:
        cache.set(nonce_key, prediction.pk, timeout=_NONCE_SECONDS)
    return _created(request, prediction.pk)


# A form's nonce is remembered this long in Django's cache (Redis when LUNGSITE_CACHE_URL is set, so
# shared by all workers; else per process).
_NONCE_SECONDS = 3600
_PENDING = "pending"


def _nonce_key(request) -> str | None:
    nonce = request.POST.get("nonce", "")
    if not nonce or len(nonce) > 64:
        return None  # a client that sends none (an old page, a script) is not deduplicated
    return f"upload-nonce:{request.user.pk}:{nonce}"


def _forget(nonce_key: str | None) -> None:
    # The first submit failed: a retry of the same form must be analysed, not refused.
    if nonce_key:
        cache.delete(nonce_key)


def _repeated_submit(request, nonce_key: str):
    """The same form sent again (a double click, a resend): no second prediction. Waits briefly for
    the first submit to finish, then sends this one to the same result."""
    deadline = time.monotonic() + 30
    value = cache.get(nonce_key)
    while value == _PENDING and time.monotonic() < deadline:
        time.sleep(0.2)
        value = cache.get(nonce_key)
    if isinstance(value, int):
        return _created(request, value)
    error = {
        "code": "already_submitted",
        "message": "This form was already sent and is still being analysed; see your history.",
    }
    return _upload_page(request, UploadForm(), error=error, status=409)


def _created(request, pk: int):
    url = reverse("prediction-detail", args=[pk])
    if _wants_json(request):
        return JsonResponse({"id": pk, "redirect": url}, status=201)
    return redirect(url)


@require_GET
@login_required
def prediction_detail(request, pk: int):
    try:
        prediction = selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No prediction with this id is visible to you.") from None

    findings = findings_ranked(prediction.results_json)
    stored_maps = {name: cam for name, cam in (prediction.heatmaps or {}).items() if isinstance(cam, list)}
    peaks = heatmaps.map_peaks(stored_maps)
    for finding in findings:
        finding["heatmap_url"] = reverse("api-prediction-heatmap", args=[prediction.pk, finding["name"]])
        peak = peaks.get(finding["name"])
        finding["peak_percent"] = None if peak is None else f"{peak * 100:.0f}"
        finding["map_state"] = heatmaps.map_state(peak)
        finding["ratio"] = finding["probability"] / finding["threshold"] if finding["threshold"] > 0 else 0.0
    names = [finding["name"] for finding in findings]
    # The top finding first; ?heatmap=Name picks another (the selector without JavaScript).
    selected = request.GET.get("heatmap") if request.GET.get("heatmap") in names else None
    selected = next((f for f in findings if f["name"] == selected), findings[0] if findings else None)
    # The heat layer is on by default only for a positive finding; ?overlay=1/0 overrides.
    overlay = request.GET.get("overlay")
    overlay_on = bool(selected and selected["positive"]) if overlay not in ("0", "1") else overlay == "1"
    recorded = prediction.recorded_model
    leading = max(findings, key=lambda f: f["ratio"], default=None)
    context = {
        "prediction": prediction,
        "findings": findings,
        "selected": selected,
        "overlay_on": overlay_on,
        "positives": sum(1 for finding in findings if finding["positive"]),
        # The case at a glance: the largest probability / threshold over the findings, so 1.00 or
        # more means at least one finding is positive (docs/viewer.md).
        "case_score": leading["ratio"] if leading else None,
        "case_leading": leading,
        "cut_off_percent": f"{heatmaps.CUT_OFF * 100:.0f}",
        "colour_bar": ", ".join(f"{colour} {at * 100:.0f}%" for at, colour in heatmaps.colour_stops()),
        "untrained": prediction.untrained,
        "version_name": recorded["version_name"],
        "model_sha256": recorded["sha256"],
        "image_url": reverse("api-prediction-image", args=[prediction.pk]),
    }
    return render(request, "web/result.html", context)
