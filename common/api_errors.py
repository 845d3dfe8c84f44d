"""One JSON shape for every API error: {"error": {"code": ..., "message": ...}}.

DRF views go through `exception_handler` (settings REST_FRAMEWORK["EXCEPTION_HANDLER"]), which maps
the one error type (common.errors.LungsiteError) and DRF's own exceptions; errors that happen outside
a DRF view under /api/ (unknown URLs, a crash in middleware) go through the Django handlers at the
bottom, which lungsite/urls.py installs as handler400/403/404/500.
"""

from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404, JsonResponse
from django.views import defaults
from drf_spectacular.utils import OpenApiExample, OpenApiResponse
from rest_framework import exceptions, serializers, status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from common.errors import LungsiteError
from common.metrics import refusal_counted

API_PREFIX = "/api/"


class PayloadTooLarge(exceptions.APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"
    default_detail = "The request body is too large."


def _flatten(detail) -> str:
    if isinstance(detail, dict):
        parts = []
        for field, value in detail.items():
            text = _flatten(value)
            parts.append(text if field in ("non_field_errors", "detail") else f"{field}: {text}")
        return " ".join(parts)
    if isinstance(detail, list):
        return " ".join(_flatten(item) for item in detail)
    return str(detail)


def error_body(code: str, message: str) -> dict:
    return {"error": {"code": code, "message": message}}


def exception_handler(exc, context):
    if isinstance(exc, LungsiteError):
        response = Response({"error": exc.as_dict()}, status=exc.status)
        if exc.retry_after is not None:
            response["Retry-After"] = str(exc.retry_after)
        refusal_counted(door="api", code=exc.code, status=exc.status)
        return response
    if isinstance(exc, Http404):
        exc = exceptions.NotFound()
    elif isinstance(exc, PermissionDenied):
        exc = exceptions.PermissionDenied()
    elif isinstance(exc, RequestDataTooBig):
        # Django raises it while reading a body over DATA_UPLOAD_MAX_MEMORY_SIZE; left alone it
        # would become a 400 HTML page.
        exc = PayloadTooLarge()
    response = drf_exception_handler(exc, context)
    if response is None:
        return None
    code = getattr(exc, "default_code", "error")
    if isinstance(exc, exceptions.ValidationError):
        code = "invalid"
    elif isinstance(getattr(exc, "detail", None), exceptions.ErrorDetail):
        code = exc.detail.code or code
    response.data = error_body(code, _flatten(getattr(exc, "detail", exc)))
    refusal_counted(door="api", code=code, status=response.status_code)
    return response


# Django-level handlers: JSON under /api/, Django's usual pages elsewhere.


def _is_api(request) -> bool:
    return request.path.startswith(API_PREFIX)


def _counted(request, code: str, response):
    refusal_counted(door="api" if _is_api(request) else "page", code=code, status=response.status_code)
    return response


def handler400(request, exception=None):
    if _is_api(request):
        if isinstance(exception, RequestDataTooBig):
            return _counted(
                request,
                "too_large",
                JsonResponse(error_body("too_large", PayloadTooLarge.default_detail), status=413),
            )
        body = error_body("bad_request", "The request could not be read.")
        return _counted(request, "bad_request", JsonResponse(body, status=400))
    return _counted(request, "bad_request", defaults.bad_request(request, exception))


def handler403(request, exception=None):
    if _is_api(request):
        message = "You do not have permission to perform this action."
        return _counted(
            request, "permission_denied", JsonResponse(error_body("permission_denied", message), status=403)
        )
    return _counted(request, "permission_denied", defaults.permission_denied(request, exception))


def handler404(request, exception=None):
    if _is_api(request):
        body = error_body("not_found", f"No API endpoint at {request.path}.")
        return _counted(request, "not_found", JsonResponse(body, status=404))
    return _counted(request, "not_found", defaults.page_not_found(request, exception))


def handler500(request):
    if _is_api(request):
        message = "An unexpected error happened on the server; it has been logged."
        return _counted(
            request, "server_error", JsonResponse(error_body("server_error", message), status=500)
        )
    return _counted(request, "server_error", defaults.server_error(request))


# The shape as documented in the OpenAPI schema.


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField(help_text="Stable machine-readable code, e.g. not_found, too_large.")
    message = serializers.CharField(help_text="What went wrong, in words a person can act on.")


class ErrorSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()


ERROR_DESCRIPTIONS = {
    400: "Invalid request (missing field, bad value, unreadable image).",
    401: "No credentials, or an invalid token.",
    403: "Authenticated, but the account lacks the permission (or the CSRF token is missing).",
    404: "Not found, or not visible to the caller.",
    405: "Method not allowed.",
    409: "Refused because of the current state (e.g. weights that cannot be loaded).",
    413: "Upload larger than LUNGSITE_MAX_UPLOAD_MB, or too many pixels.",
    415: "Unsupported media type (request body or image format).",
    422: "The image was read but cannot be analysed (not a frontal chest radiograph, burned-in "
    "annotation, too slow or too large to decode), or an Idempotency-Key already used for another image.",
    429: "Too many predictions: wait for the number of seconds in Retry-After.",
    503: "No model can serve, or the database or storage is unreachable.",
}


def error_responses(*statuses: int) -> dict:
    """OpenAPI responses for the given error statuses, all with the one error shape."""
    return {
        code: OpenApiResponse(
            ErrorSerializer,
            description=ERROR_DESCRIPTIONS[code],
            examples=[
                OpenApiExample(
                    f"error {code}",
                    value=error_body(_EXAMPLE_CODES[code], ERROR_DESCRIPTIONS[code]),
                    response_only=True,
                    status_codes=[str(code)],
                )
            ],
        )
        for code in statuses
    }


_EXAMPLE_CODES = {
    400: "invalid",
    401: "not_authenticated",
    403: "permission_denied",
    404: "not_found",
    405: "method_not_allowed",
    409: "activation_failed",
    413: "too_large",
    415: "unsupported_media_type",
    422: "not_frontal_chest",
    429: "throttled",
    503: "model_unavailable",
}
