"""REST API for predictions: thin views over analysis.services and the audit selectors/services.

Visibility is the selectors' (owner, auditors, superusers); anything not visible is a 404, so an id
reveals nothing about other people's predictions.
"""

import hashlib

from django.conf import settings
from django.http import HttpResponse
from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiRequest,
    OpenApiResponse,
    extend_schema,
)
from rest_framework import exceptions, status
from rest_framework.pagination import CursorPagination
from rest_framework.parsers import FormParser, MultiPartParser
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from analysis import services as analysis_services
from audit import idempotency
from audit import selectors as audit_selectors
from audit import services as audit_services
from audit.models import Prediction
from common.api_errors import PayloadTooLarge, error_responses
from common.errors import StorageUnavailable
from common.permissions import has_perm
from common.throttling import PredictionRateThrottle
from registry.models import UNTRAINED_WARNING
from web.serializers import (
    PredictionFilterSerializer,
    PredictionSerializer,
    PredictionUploadSerializer,
)

CanPredict = has_perm("audit.add_prediction")
CanViewPredictions = has_perm("audit.view_prediction")

# Predictions never change, so the browser that was allowed to see their images may keep them, but
# only briefly (shared workstations; logging out also clears them, common/middleware.py).
IMAGE_CACHE_CONTROL = "private, max-age=300"

_EXAMPLE_HOST = "https://lungsite.example.org/api/v1/predictions/42"
PREDICTION_EXAMPLE = {
    "id": 42,
    "created_at": "2026-11-26T14:03:12.345678Z",
    "model": {
        "id": 1,
        "version_name": "starter-untrained-densenet121",
        "sha256": "5f0c0e5b3c1d4f8e9a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
        "untrained": True,
    },
    "findings": [
        {
            "name": "Atelectasis",
            "score": 0.512,
            "probability": None,
            "calibrated": False,
            "threshold": 0.5,
            "positive": True,
        },
        {
            "name": "Cardiomegaly",
            "score": 0.473,
            "probability": None,
            "calibrated": False,
            "threshold": 0.5,
            "positive": False,
        },
    ],
    "heatmaps": {
        "Atelectasis": f"{_EXAMPLE_HOST}/heatmaps/Atelectasis.png",
        "Cardiomegaly": f"{_EXAMPLE_HOST}/heatmaps/Cardiomegaly.png",
    },
    "image_sha256": "9b2d5c0e1f3a4b6c8d7e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d6e7f8a9b0c",
    "image_url": f"{_EXAMPLE_HOST}/image",
    "warning": UNTRAINED_WARNING,
    "honesty": {
        "state": "untrained",
        "statement": UNTRAINED_WARNING,
        "evaluation_id": None,
        "outside": False,
    },
    "ood": None,
}
PREDICTION_EXAMPLES = [
    OpenApiExample("prediction (2 of the 13 findings shown)", value=PREDICTION_EXAMPLE, response_only=True)
]


# The upload as the schema describes it: one non-empty binary part. (No schema can say "the bytes
# of a readable chest X-ray": bytes that are not one get a 400, 413, 415 or 422 that says why.)
UPLOAD_REQUEST = OpenApiRequest(
    {
        "type": "object",
        "properties": {
            "image": {
                "type": "string",
                "format": "binary",
                "minLength": 1,
                "description": PredictionUploadSerializer().fields["image"].help_text
                + " A file part: a text field named image is refused.",
            }
        },
        "required": ["image"],
    },
    encoding={"image": {"contentType": "image/png, image/jpeg, application/dicom, application/octet-stream"}},
)


def _refuse_oversize_body(request) -> None:
    """Refuses an announced body over the limit before reading it, rather than after spooling it."""
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if settings.DATA_UPLOAD_MAX_MEMORY_SIZE is not None and length > settings.DATA_UPLOAD_MAX_MEMORY_SIZE:
        raise PayloadTooLarge(f"Uploads are limited to {settings.LUNGSITE_MAX_UPLOAD_MB} MB.")


def _visible_prediction(request, pk: int) -> Prediction:
    try:
        return audit_selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise exceptions.NotFound(f"Prediction {pk} not found.") from None


def _storage_unavailable(exc: Exception) -> StorageUnavailable:
    # StorageUnavailable says what failed in words; a bare OSError's text may hold a server path.
    if isinstance(exc, StorageUnavailable):
        return exc
    return StorageUnavailable(f"The image store is unavailable ({type(exc).__name__}).")


def _image_missing(pk: int) -> exceptions.NotFound:
    return exceptions.NotFound(f"The stored image of prediction {pk} is missing from the image store.")


class PredictionCreateApi(APIView):
    permission_classes = [CanPredict]
    parser_classes = [MultiPartParser, FormParser]
    throttle_classes = [PredictionRateThrottle]
    InputSerializer = PredictionUploadSerializer
    OutputSerializer = PredictionSerializer

    @extend_schema(
        operation_id="predictions_create",
        summary="Analyse a chest X-ray",
        description=(
            "Upload one image (PNG, JPEG or DICOM) as the multipart field `image`. Returns the "
            "score of each finding from the active model version (a `probability` too where the "
            "version is calibrated for it), the URL of each finding's Grad-CAM heatmap, the version "
            "that produced the result and what must be said about it (`warning`, `honesty`: untrained, "
            "not evaluated, not validated, or the image outside what it was evaluated on). With "
            "LUNGSITE_OOD_REFUSE on, such an image is refused (422 `outside_evaluation`). Needs the "
            "clinician role (permission audit.add_prediction). Rate-limited per user "
            "(LUNGSITE_PREDICTION_RATE)."
        ),
        request={"multipart/form-data": UPLOAD_REQUEST},
        parameters=[
            OpenApiParameter(
                "Idempotency-Key",
                {"type": "string", "minLength": 1, "maxLength": 255, "pattern": idempotency.KEY_PATTERN},
                OpenApiParameter.HEADER,
                description=(
                    "Optional. A key of your choice (a UUID) unique to this image: a retry with the same key "
                    "gets the prediction the first request made (200, header Idempotent-Replayed: true) "
                    "instead of a second one; the same key with another image is refused (422)."
                ),
            )
        ],
        responses={
            201: OpenApiResponse(PredictionSerializer, examples=PREDICTION_EXAMPLES),
            200: OpenApiResponse(
                PredictionSerializer,
                description="The prediction an earlier request with the same Idempotency-Key made.",
            ),
            **error_responses(400, 401, 403, 413, 415, 422, 429, 503),
        },
        tags=["predictions"],
    )
    def post(self, request):
        _refuse_oversize_body(request)
        key = _idempotency_key(request)
        serializer = self.InputSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        upload = serializer.validated_data["image"]

        def analyse() -> Prediction:
            return analysis_services.analyse(
                upload=upload, file_name=upload.name or "", user=request.user, source=Prediction.SOURCE_API
            )

        # With an Idempotency-Key, a retry gets the first request's prediction (audit.idempotency);
        # a key reused for another image is refused (422 idempotency_key_reused).
        prediction, replayed = idempotency.prediction_once(
            user=request.user, key=key, image_sha256=_upload_sha256(upload) if key else "", create=analyse
        )
        data = self.OutputSerializer(prediction, context={"request": request}).data
        headers = {"Location": reverse("api-prediction-detail", kwargs={"pk": prediction.pk})}
        if replayed:
            headers["Idempotent-Replayed"] = "true"
        return Response(
            data, status=status.HTTP_200_OK if replayed else status.HTTP_201_CREATED, headers=headers
        )


def _idempotency_key(request) -> str | None:
    value = request.headers.get("Idempotency-Key")
    if value is None:
        return None
    try:
        return idempotency.key_checked(value)
    except idempotency.InvalidKey as exc:
        raise exceptions.ValidationError({"Idempotency-Key": [str(exc)]}) from exc


def _upload_sha256(upload) -> str:
    digest = hashlib.sha256()
    for chunk in upload.chunks():
        digest.update(chunk)
    upload.seek(0)
    return digest.hexdigest()


class PredictionCursorPagination(CursorPagination):
    """Newest first; `next`/`previous` are opaque cursors at a (created_at, id) position, read
    from the index, so a page deep in a million-row log costs what the first one does. No total
    count: counting grows with the table."""

    ordering = ("-created_at", "-id")


class PredictionListApi(APIView):
    permission_classes = [CanViewPredictions]
    pagination_class = PredictionCursorPagination
    FilterSerializer = PredictionFilterSerializer
    OutputSerializer = PredictionSerializer

    @extend_schema(
        operation_id="predictions_list",
        summary="List predictions",
        description=(
            "The caller's own predictions, newest first, 50 per page (follow `next`, a cursor; "
            "no total count); auditors and superusers see everyone's. "
            "Filters: `model` (version id or name), `created_after`, `created_before`."
        ),
        parameters=[PredictionFilterSerializer],
        responses={200: PredictionSerializer(many=True), **error_responses(400, 401, 403, 404)},
        tags=["predictions"],
    )
    def get(self, request):
        filters = self.FilterSerializer(data=request.query_params)
        filters.is_valid(raise_exception=True)
        options = filters.validated_data
        predictions = audit_selectors.predictions_filter(
            audit_selectors.prediction_list_for(user=request.user),
            model_ref=options.get("model", ""),
            created_after=options.get("created_after"),
            created_before=options.get("created_before"),
        )
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(predictions, request, view=self)
        data = self.OutputSerializer(page, many=True, context={"request": request}).data
        return paginator.get_paginated_response(data)


class PredictionListCreateApi(PredictionListApi, PredictionCreateApi):
    """`/predictions/` carries two operations; each keeps the permission and throttle of its class."""

    def _operation(self) -> type[APIView]:
        return PredictionCreateApi if self.request.method == "POST" else PredictionListApi

    def get_permissions(self):
        return [permission() for permission in self._operation().permission_classes]

    def get_throttles(self):
        return [throttle() for throttle in self._operation().throttle_classes]


class PredictionDetailApi(APIView):
    permission_classes = [CanViewPredictions]
    OutputSerializer = PredictionSerializer

    @extend_schema(
        operation_id="predictions_retrieve",
        summary="Read a prediction",
        description="The same JSON as the POST returned. Visible to its owner, auditors and superusers.",
        responses={
            200: OpenApiResponse(PredictionSerializer, examples=PREDICTION_EXAMPLES),
            **error_responses(401, 403, 404),
        },
        tags=["predictions"],
    )
    def get(self, request, pk: int):
        prediction = _visible_prediction(request, pk)
        return Response(self.OutputSerializer(prediction, context={"request": request}).data)


class _BinaryApi(APIView):
    """Base of the image endpoints: their errors are JSON whatever the Accept header (an <img> asks
    for image/*), so content negotiation never refuses with 406."""

    permission_classes = [CanViewPredictions]
    renderer_classes = [JSONRenderer]

    def perform_content_negotiation(self, request, force=False):
        return super().perform_content_negotiation(request, force=True)


class PredictionHeatmapApi(_BinaryApi):
    @extend_schema(
        operation_id="predictions_heatmap_retrieve",
        summary="Heatmap of one finding (PNG)",
        description=(
            "The Grad-CAM overlay of one finding on the analysed image, as a PNG. Works with token "
            "or session authentication, so pages can use it in <img>."
        ),
        parameters=[
            OpenApiParameter("name", OpenApiTypes.STR, OpenApiParameter.PATH, description="Finding name")
        ],
        responses={
            (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="PNG image"),
            **error_responses(401, 403, 404, 503),
        },
        tags=["predictions"],
    )
    def get(self, request, pk: int, name: str):
        prediction = _visible_prediction(request, pk)
        try:
            png = audit_services.heatmap_png(prediction=prediction, name=name)
        except LookupError:
            raise exceptions.NotFound(f"Prediction {pk} has no heatmap named {name!r}.") from None
        except FileNotFoundError:
            raise _image_missing(pk) from None
        except (StorageUnavailable, OSError) as exc:
            raise _storage_unavailable(exc) from exc
        response = HttpResponse(png, content_type="image/png")
        response["Cache-Control"] = IMAGE_CACHE_CONTROL
        return response


class PredictionImageApi(_BinaryApi):
    @extend_schema(
        operation_id="predictions_image_retrieve",
        summary="The analysed image",
        description=(
            "The image as stored for audit (a DICOM upload is stored as a PNG of its pixels, without "
            "its header). Token or session authentication."
        ),
        responses={
            (200, "image/png"): OpenApiResponse(OpenApiTypes.BINARY, description="PNG image"),
            (200, "image/jpeg"): OpenApiResponse(OpenApiTypes.BINARY, description="JPEG image"),
            **error_responses(401, 403, 404, 503),
        },
        tags=["predictions"],
    )
    def get(self, request, pk: int):
        prediction = _visible_prediction(request, pk)
        try:
            data, content_type = audit_services.image_bytes(prediction=prediction)
        except FileNotFoundError:
            raise _image_missing(pk) from None
        except (StorageUnavailable, OSError) as exc:
            raise _storage_unavailable(exc) from exc
        response = HttpResponse(data, content_type=content_type)
        response["Cache-Control"] = IMAGE_CACHE_CONTROL
        return response
