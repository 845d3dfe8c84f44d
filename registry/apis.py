"""REST API for the model registry: list and read versions, and activate one through the same
service as the admin action and `manage.py activate_model`."""

from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.pagination import PageNumberPagination
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api_errors import error_responses
from common.fields import TextField
from common.permissions import has_perm
from registry import services
from registry.models import DEFAULT_CLASS_NAMES, DEFAULT_PREPROCESSING, UNTRAINED_WARNING, ModelVersion
from registry.serializers import ModelVersionSerializer

CanViewModels = has_perm("registry.view_modelversion")
CanActivateModels = has_perm("registry.activate_modelversion")

MAX_ID = 2**63 - 1

MODEL_EXAMPLE = {
    "id": 1,
    "version_name": "starter-untrained-densenet121",
    "created_at": "2026-11-26T13:58:01.000000Z",
    "is_active": True,
    "activated_at": "2026-11-26T13:58:02.000000Z",
    "sha256": "5f0c0e5b3c1d4f8e9a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f",
    "architecture": "densenet121",
    "class_names": DEFAULT_CLASS_NAMES,
    "preprocessing": DEFAULT_PREPROCESSING,
    "thresholds": dict.fromkeys(DEFAULT_CLASS_NAMES, 0.5),
    "accuracy_auroc": None,
    "per_class_auroc": {},
    "published_auroc": None,
    "untrained": True,
    "notes": "UNTRAINED: a DenseNet121 with random weights (seed 0).",
    "warning": UNTRAINED_WARNING,
    "honesty": {"state": "untrained", "statement": UNTRAINED_WARNING, "evaluation_id": None},
    "evaluation": None,
    "calibration": {"method": None, "calibrated_findings": [], "fitted_on": None, "fitted_at": None},
    "activations": [
        {
            "activated_at": "2026-11-26T13:58:02.000000Z",
            "activated_by": None,
            "via": "bootstrap",
            "previous": None,
            "reason": "",
            "override_reason": "",
        }
    ],
}
MODEL_EXAMPLES = [OpenApiExample("the untrained starter", value=MODEL_EXAMPLE, response_only=True)]


class ModelPagination(PageNumberPagination):
    """50 a page; `?page=` (empty) is the first page, as the schema says."""

    def get_schema_operation_parameters(self, view):
        return [
            {
                "name": self.page_query_param,
                "required": False,
                "in": "query",
                "description": "Page number, from 1 (empty: the first page; past the last: 404).",
                "schema": {"anyOf": [{"type": "integer", "minimum": 1}, {"type": "string", "maxLength": 0}]},
            }
        ]


def _version(pk: int) -> ModelVersion:
    version = ModelVersion.objects.filter(pk=pk).first() if pk <= MAX_ID else None
    if version is None:
        raise exceptions.NotFound(f"Model version {pk} not found.")
    return version


class ModelListApi(APIView):
    permission_classes = [CanViewModels]
    pagination_class = ModelPagination
    OutputSerializer = ModelVersionSerializer

    @extend_schema(
        operation_id="models_list",
        summary="List model versions",
        description="Every registered version, newest first, 50 per page. Needs registry.view_modelversion.",
        responses={200: ModelVersionSerializer(many=True), **error_responses(401, 403, 404)},
        tags=["models"],
    )
    def get(self, request):
        paginator = self.pagination_class()
        page = paginator.paginate_queryset(ModelVersion.objects.all(), request, view=self)
        return paginator.get_paginated_response(self.OutputSerializer(page, many=True).data)


class ModelDetailApi(APIView):
    permission_classes = [CanViewModels]
    OutputSerializer = ModelVersionSerializer

    @extend_schema(
        operation_id="models_retrieve",
        summary="Read a model version",
        description="Class names, thresholds, per-class AUROC, sha256, and whether it is active.",
        responses={
            200: OpenApiResponse(ModelVersionSerializer, examples=MODEL_EXAMPLES),
            **error_responses(401, 403, 404),
        },
        tags=["models"],
    )
    def get(self, request, pk: int):
        return Response(self.OutputSerializer(_version(pk)).data)


class ModelActivateInputSerializer(serializers.Serializer):
    override_reason = TextField(
        required=False,
        allow_blank=True,
        max_length=5000,
        help_text="Why a version without a passing evaluation is activated anyway (the evaluation gate, "
        "LUNGSITE_ACTIVATION_GATE): recorded with the activation. Not needed for an evaluated version.",
    )


class ModelActivateApi(APIView):
    permission_classes = [CanActivateModels]
    InputSerializer = ModelActivateInputSerializer
    OutputSerializer = ModelVersionSerializer

    @extend_schema(
        operation_id="models_activate",
        summary="Activate a model version",
        description=(
            "Makes this version the one that serves predictions, on every worker at its next request "
            "(no restart). Refused with 409 when its weights cannot be loaded or do not match their "
            "sha256, and (409 `evaluation_required`) when the evaluation gate refuses it: no held-out "
            "evaluation, NOT VALIDATED (mean-AUROC interval includes 0.5 or below the floor), or its "
            "interval entirely below the active version's on the same set. Body "
            '`{"override_reason": "..."}` activates it anyway; the reason is kept in the activation '
            "history (`activations` of the version). Activating the active version changes nothing. "
            "Needs the model-admin role (registry.activate_modelversion)."
        ),
        request=ModelActivateInputSerializer,
        responses={
            200: OpenApiResponse(ModelVersionSerializer, examples=MODEL_EXAMPLES),
            **error_responses(400, 401, 403, 404, 409, 503),
        },
        tags=["models"],
    )
    def post(self, request, pk: int):
        version = _version(pk)
        given = self.InputSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        # Refusals are common.errors.LungsiteError (registry.services.ActivationError and its kinds):
        # the API's exception handler answers them with their code and status.
        version = services.model_version_activate(
            version=version,
            user=request.user,
            via="api",
            override_reason=given.validated_data.get("override_reason", ""),
        )
        return Response(self.OutputSerializer(version).data)
