import secrets
import time

from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.core.cache import cache
from django.core.exceptions import ObjectDoesNotExist, PermissionDenied
from django.http import Http404, HttpResponse, JsonResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods

from analysis import services
from audit import selectors
from audit import services as audit_services
from audit.filters import BORDERLINE_POINTS, finding_top, findings_ranked
from audit.honesty import prediction_honesty, report_qualifier
from audit.models import Prediction
from common import metrics
from common.errors import LungsiteError
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
    image = form.cleaned_data["image"]
    try:
        prediction = services.analyse(
            upload=image, file_name=image.name or "", user=request.user, source=Prediction.SOURCE_WEB
        )
    except LungsiteError as exc:
        _forget(nonce_key)
        response = _upload_page(request, UploadForm(), error=exc.as_dict(), status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        return response
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


# The outline of a finding's map: where it is at least HALF_PEAK of its own peak, and at most its
# strongest TOP_AREA of the image (docs/viewer.md). Read by static/js/result.js.
HALF_PEAK = 0.5
TOP_AREA = 0.15
# Earlier results of the same patient shown beside this one.
PRIORS_SHOWN = 4
# What the viewer's script reads of each finding.
_VIEWER_KEYS = ("name", "label", "score", "threshold_score", "positive", "borderline", "map_state", "map")


def _viewer_findings(prediction: Prediction, findings: list[dict]) -> None:
    """Adds to each finding its map (on the case's scale, for the viewer to draw), its peak and
    what its layer shows ("shown", "faint", "empty" or "missing")."""
    maps = {name: cam for name, cam in prediction.heatmap_maps().items() if isinstance(cam, list)}
    peaks = heatmaps.map_peaks(maps)
    scale = heatmaps.case_scale(maps.values())
    for finding in findings:
        finding["heatmap_url"] = reverse("api-prediction-heatmap", args=[prediction.pk, finding["name"]])
        peak = peaks.get(finding["name"])
        finding["peak_percent"] = None if peak is None else f"{peak * 100:.0f}"
        finding["map_state"] = heatmaps.map_state(peak)
        cam = maps.get(finding["name"])
        finding["map"] = (
            None
            if cam is None or scale <= 0
            else [[round(max(0.0, float(value)) / scale, 4) for value in row] for row in cam]
        )


def _report_line(version_name: str, qualifier: str, findings: list[dict]) -> str:
    """The draft line a radiologist may copy into a report: scores and thresholds, never a diagnosis."""

    def scored(finding: dict) -> str:
        extra = ", borderline" if finding["borderline"] else ""
        return f"{finding['label']} score {finding['score']} (threshold {finding['threshold_score']}{extra})"

    positives = [f for f in findings if f["positive"]]
    lead = f"AI findings (lungsite {version_name}, {qualifier}): "
    if positives:
        rest = len(findings) - len(positives)
        text = "above threshold: " + "; ".join(scored(f) for f in positives)
        text += f". {rest} other finding{'s' if rest != 1 else ''} below threshold"
    elif findings:
        text = f"no finding above its threshold (highest: {scored(findings[0])})"
    else:
        text = "no findings recorded"
    borderline = [f for f in findings if f["borderline"] and not f["positive"]]
    if borderline and positives:
        text += "; borderline below: " + "; ".join(scored(f) for f in borderline)
    return lead + text + ". Model output for review, not a diagnosis."


def _priors(request, prediction: Prediction) -> list[Prediction]:
    """Earlier predictions of the same patient, newest first, that this user may see: the PACS sent
    them with the same patient ID (pacs.ReceivedInstance.patient_key, a keyed hash of it)."""
    try:
        key = prediction.received_instance.patient_key
    except ObjectDoesNotExist:  # not from the PACS
        return []
    if not key:
        return []
    rows = (
        selectors.prediction_list_for(user=request.user)
        .filter(received_instance__patient_key=key, created_at__lte=prediction.created_at)
        .exclude(pk=prediction.pk)
        .defer("heatmaps", "heatmap_data")
        .order_by("-created_at", "-id")[:PRIORS_SHOWN]
    )
    priors = list(rows)
    for prior in priors:
        prior.by_name = {f["name"]: f for f in findings_ranked(prior.results_json)}
    return priors


@require_GET
@login_required
def prediction_detail(request, pk: int):
    try:
        prediction = selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No prediction with this id is visible to you.") from None

    findings = findings_ranked(prediction.results_json)
    _viewer_findings(prediction, findings)
    names = [finding["name"] for finding in findings]
    top = finding_top(findings)
    # The top finding first; ?heatmap=Name picks another (the selector without JavaScript).
    selected = request.GET.get("heatmap") if request.GET.get("heatmap") in names else None
    selected = next((f for f in findings if f["name"] == selected), top)
    # The layer is on by default for a positive finding; ?overlay=1/0 overrides.
    overlay = request.GET.get("overlay")
    overlay_on = bool(selected and selected["positive"]) if overlay not in ("0", "1") else overlay == "1"
    recorded = prediction.recorded_model
    honesty = prediction_honesty(prediction)
    priors = _priors(request, prediction)
    for finding in findings:
        finding["priors"] = [prior.by_name.get(finding["name"]) for prior in priors]
    viewer = {
        "pixels": reverse("prediction-pixels", args=[prediction.pk]),
        "selected": selected["name"] if selected else None,
        "layerOn": overlay_on,
        "cutOff": heatmaps.CUT_OFF,
        "halfPeak": HALF_PEAK,
        "topArea": TOP_AREA,
        "colours": [f"#{r:02x}{g:02x}{b:02x}" for r, g, b in heatmaps.COLOUR_MAP],
        "findings": [
            {
                key: finding[key]
                for key in (
                    "name",
                    "label",
                    "score",
                    "threshold_score",
                    "positive",
                    "borderline",
                    "map_state",
                    "map",
                )
            }
            for finding in findings
        ],
    }
    context = {
        "prediction": prediction,
        "findings": findings,
        "selected": selected,
        "overlay_on": overlay_on,
        "positives": sum(1 for finding in findings if finding["positive"]),
        "borderlines": sum(1 for finding in findings if finding["borderline"]),
        "top": top,
        "honesty": honesty,
        "report_line": _report_line(recorded["version_name"], report_qualifier(honesty), findings),
        "priors": priors,
        "viewer": viewer,
        "borderline_points": BORDERLINE_POINTS,
        "cut_off_percent": f"{heatmaps.CUT_OFF * 100:.0f}",
        "top_area_percent": f"{TOP_AREA * 100:.0f}",
        "colour_bar": ", ".join(f"{colour} {at * 100:.0f}%" for at, colour in heatmaps.colour_stops()),
        "untrained": prediction.untrained,
        "version_name": recorded["version_name"],
        "model_sha256": recorded["sha256"],
        "image_url": reverse("api-prediction-image", args=[prediction.pk]),
    }
    return render(request, "web/result.html", context)


@require_GET
@login_required
def prediction_pixels(request, pk: int):
    """The image's gray levels for the viewer's window/level on the full bit depth: raw little-endian
    uint16, row by row, of the display derivative (at most audit.services.DISPLAY_MAX_SIDE on its
    longest side); its size and largest level (255 or 65535) in the X-Image-* headers. A canvas
    holds 8 bits a channel and a browser decodes every PNG to 8 bits, so the levels travel as they
    are and the page windows them itself (docs/viewer.md)."""
    try:
        prediction = selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No prediction with this id is visible to you.") from None
    try:
        display = audit_services.display_pixels(prediction=prediction)
    except (audit_services.StorageUnavailable, FileNotFoundError):
        return HttpResponse("The stored image is unavailable.", status=503, content_type="text/plain")
    response = HttpResponse(display.pixels.astype("<u2").tobytes(), content_type="application/octet-stream")
    response["X-Image-Width"] = str(display.width)
    response["X-Image-Height"] = str(display.height)
    response["X-Image-Max"] = str(display.maximum)
    response["Cache-Control"] = "private, max-age=300"
    return response
