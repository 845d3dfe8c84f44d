import logging
import time

from django.core.files.storage import storages
from django.db import DatabaseError
from django.http import JsonResponse
from django.urls import Resolver404, resolve, reverse
from django.views.decorators.cache import never_cache
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view
from rest_framework.response import Response

from common.api_errors import error_body
from common.supabase_storage import STORAGE_ERRORS
from registry import selectors
from registry.cache import serving_state
from registry.serializers import ModelVersionSummarySerializer

logger = logging.getLogger(__name__)

# An object name that is never written: asking for it checks that the storage answers.
HEALTHZ_OBJECT = "healthz-probe"


@never_cache
def healthz(request):
    """Liveness and readiness in one, without authentication: what is up and what is down, as JSON.

    `checks` names each dependency: `database` and `storage` ("ok" or "unavailable"; either down
    gives a 503), and `model`: "ok", "none_active" when nothing can serve predictions yet, or, for
    what this worker found, "withdrawn" (the active version gave non-finite outputs and does not
    serve here) or "failed" (it cannot be loaded); then `serving` names the version that serves in
    its place, if any, and `model_problem` says why. A withdrawn or failed model gives a 503 only
    when nothing else serves."""
    if request.method not in ("GET", "HEAD"):
        response = JsonResponse(error_body("method_not_allowed", "Use GET."), status=405)
        response["Allow"] = "GET, HEAD"
        return response
    checks, model, errors, problem = {}, None, [], None
    try:
        active = selectors.model_version_get_active()
    except DatabaseError as exc:
        logger.error("healthz: database unavailable: %s", exc)
        checks["database"] = checks["model"] = "unavailable"
        errors.append(("database_unavailable", "The database is unreachable."))
    else:
        checks["database"] = "ok"
        state = serving_state()
        checks["model"] = state["state"] if state["state"] != "not_loaded" else "ok"
        model = ModelVersionSummarySerializer(active).data if active is not None else None
        if state["state"] in ("withdrawn", "failed"):
            problem = {"serving": state["serving"], "reason": state["reason"]}
            if state["serving"] is None:
                message = f"The active model version is {state['state']} here: {state['reason']}"
                errors.append(("model_unavailable", message))
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
            "model_problem": problem,
            "error": {"code": code, "message": " ".join(text for _, text in errors)},
        }
        return JsonResponse(body, status=503)
    body = {"status": "ok" if problem is None else "degraded", "checks": checks, "model": model}
    if problem is not None:
        body["model_problem"] = problem
    return JsonResponse(body)


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


# What `GET /api/v1/` lists: (name, method, URL name, its arguments, what it does). The listed URL
# has {id} and {finding} where a prediction's or model's id and a finding's name go.
_ID, _FINDING = {"pk": 999999999}, {"pk": 999999999, "name": "FINDING"}
_API_ENDPOINTS = [
    ("predictions", "POST", "api-predictions", {}, "Analyse an X-ray (multipart field `image`)."),
    ("predictions", "GET", "api-predictions", {}, "Your predictions, newest first."),
    ("prediction", "GET", "api-prediction-detail", _ID, "One prediction: findings, model, heatmap URLs."),
    ("heatmap", "GET", "api-prediction-heatmap", _FINDING, "A finding's heat layer (RGBA PNG)."),
    ("image", "GET", "api-prediction-image", _ID, "The analysed image as stored."),
    ("labels", "GET", "api-prediction-labels", _ID, "Clinician feedback on a prediction's findings."),
    ("labels", "POST", "api-prediction-labels", _ID, "Mark findings present / absent / unsure."),
    ("jobs", "POST", "api-jobs", {}, "A batch job: a ZIP (`archive`) or several `images` parts."),
    ("jobs", "GET", "api-jobs", {}, "Your batch jobs, newest first."),
    ("job", "GET", "api-job-detail", _ID, "A job's progress and the versions that ran."),
    ("job results", "GET", "api-job-results", _ID, "A job's results as CSV."),
    ("job cancel", "POST", "api-job-cancel", _ID, "Cancel a job's images not analysed yet."),
    ("models", "GET", "api-models", {}, "The registered model versions."),
    ("model", "GET", "api-model-detail", _ID, "One model version."),
    ("activate", "POST", "api-model-activate", _ID, "Make a version active (model admins)."),
    ("evaluation", "GET", "api-evaluation-detail", _ID, "An evaluation: AUROC with intervals, outputs."),
    ("shadow", "GET", "api-shadow", {}, "The shadow version against the live ones (model admins)."),
    ("drift", "GET", "api-drift", {}, "Scores, inputs and OOD share per week (model admins)."),
    ("schema", "GET", "api-schema", {}, "The OpenAPI 3 document (?format=json for JSON)."),
    ("docs", "GET", "api-docs", {}, "The API documentation in a browser (Swagger UI)."),
]


def _url_template(name: str, kwargs: dict) -> str:
    return reverse(name, kwargs=kwargs).replace("999999999", "{id}").replace("FINDING", "{finding}")


@extend_schema(responses=OpenApiTypes.OBJECT, summary="The endpoints of the API")
@api_view(["GET"])
def api_index(request):
    """`GET /api/v1/`: the endpoints of the API, so that a client starting at the root finds its
    way. Like every endpoint but /healthz it needs a token or a session."""
    endpoints = [
        {"name": key, "method": method, "url": _url_template(name, kwargs), "description": text}
        for key, method, name, kwargs, text in _API_ENDPOINTS
    ]
    return Response(
        {
            "name": "lungsite API",
            "version": "v1",
            "authentication": "Authorization: Token <key>; an administrator creates the key "
            "(manage.py drf_create_token USERNAME, or the admin's Tokens page).",
            "health": reverse("healthz"),
            "endpoints": endpoints,
        }
    )


# --- /metrics -------------------------------------------------------------------------------------


def _scraper_allowed(request) -> bool | None:
    """True for the scraper's bearer token (LUNGSITE_METRICS_TOKEN) or a superuser (session or API
    token); False for anyone else signed in; None for an anonymous request."""
    import hmac

    from django.conf import settings
    from rest_framework.authentication import TokenAuthentication, get_authorization_header
    from rest_framework.exceptions import AuthenticationFailed

    header = get_authorization_header(request).decode("latin-1")
    expected = settings.LUNGSITE_METRICS_TOKEN
    if expected and header.startswith("Bearer ") and hmac.compare_digest(header[7:].strip(), expected):
        return True
    user = request.user if request.user.is_authenticated else None
    if user is None and header.startswith("Token "):
        try:
            found = TokenAuthentication().authenticate(request)
        except AuthenticationFailed:
            found = None
        user = found[0] if found else None
    if user is None:
        return None
    return user.is_superuser


def _gauges() -> dict:
    """What the database, the broker and the checkpoint store say now (None: could not be read)."""
    from django.conf import settings
    from django.core.cache import cache

    from audit.checkpoints import checkpoint_age_seconds
    from jobs.models import JobImage
    from pacs.models import ResultObject

    def read(what, how):
        try:
            return how()
        except Exception as exc:  # noqa: BLE001 - a scrape reports what it can
            logger.warning("metrics: cannot read %s: %s", what, exc)
            return None

    def broker_messages():
        from lungsite.celery import app

        with app.connection_for_read() as connection:
            connection.ensure_connection(max_retries=1, timeout=2)
            declared = connection.default_channel.queue_declare(
                settings.CELERY_TASK_DEFAULT_QUEUE, passive=True
            )
            return declared.message_count

    def checkpoint_age():
        # Listing the checkpoints is a storage request: at most once a minute per worker.
        age = cache.get("metrics:checkpoint-age")
        if age is None:
            age = checkpoint_age_seconds()
            cache.set("metrics:checkpoint-age", (age, time.time()), timeout=60)
            return age
        value, at = age
        return None if value is None else value + (time.time() - at)

    return {
        "lungsite_queue_messages": (
            "Tasks waiting in the Celery queue (batch jobs, PACS analysis).",
            read("the broker", broker_messages),
        ),
        "lungsite_job_images_pending": (
            "Images of batch jobs not analysed yet.",
            read("job images", lambda: JobImage.objects.filter(state=JobImage.STATE_PENDING).count()),
        ),
        "lungsite_pacs_results_pending": (
            "Results (SR, SC) not yet taken by the PACS: the outbox backlog.",
            read("the PACS outbox", lambda: ResultObject.objects.filter(state=ResultObject.PENDING).count()),
        ),
        "lungsite_audit_checkpoint_age_seconds": (
            "Seconds since the audit chain's newest checkpoint was written.",
            read("the audit checkpoints", checkpoint_age),
        ),
    }


@never_cache
def metrics(request):
    """Prometheus metrics (common.metrics): for the scraper's bearer token or a superuser only."""
    from django.http import HttpResponse

    from common.metrics import CONTENT_TYPE, exposition

    allowed = _scraper_allowed(request)
    if allowed is None:
        response = JsonResponse(
            error_body("not_authenticated", "Send the metrics token as a bearer token."), status=401
        )
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not allowed:
        return JsonResponse(
            error_body("permission_denied", "Only superusers may read the metrics."), status=403
        )
    return HttpResponse(exposition(_gauges()), content_type=CONTENT_TYPE)
