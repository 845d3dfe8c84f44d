"""REST API of learning: the drift figures, the shadow comparison and an evaluation with the
outputs behind it (so anyone can recompute its figures)."""

from django.conf import settings
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema, extend_schema_field
from rest_framework import exceptions, serializers
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api_errors import error_responses
from common.permissions import has_perm
from learning.drift import drift_report
from learning.views import MAX_WEEKS
from registry.models import Evaluation

CanViewModels = has_perm("registry.view_modelversion")
IsModelAdmin = has_perm("registry.change_modelversion")
MAX_ID = 2**63 - 1


class DriftQuerySerializer(serializers.Serializer):
    weeks = serializers.IntegerField(
        min_value=1, max_value=MAX_WEEKS, default=12, help_text=f"How many weeks back (1-{MAX_WEEKS})."
    )
    version = serializers.IntegerField(
        min_value=1, max_value=MAX_ID, required=False, help_text="Only this version id."
    )


class DriftApi(APIView):
    permission_classes = [IsModelAdmin]

    @extend_schema(
        operation_id="drift_retrieve",
        summary="Drift per version and week",
        description=(
            "Per version and ISO week (Monday, UTC): volume; per finding the served scores' distribution in "
            "the deciles of the evaluation set's scores, its population-stability index (PSI) and the "
            "share of positive calls beside the evaluation set's; the share of inputs outside what the "
            "version was evaluated on; the input mix (format and modality, manufacturer, size, bits). "
            "`alert` is set when a finding's PSI passes `psi_alert` in a week with at least `min_weekly` "
            "predictions. Model-admins only (registry.change_modelversion)."
        ),
        parameters=[DriftQuerySerializer],
        responses={200: OpenApiTypes.OBJECT, **error_responses(400, 401, 403)},
        tags=["models"],
    )
    def get(self, request):
        query = DriftQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        return Response(
            drift_report(weeks=query.validated_data["weeks"], version_id=query.validated_data.get("version"))
        )


class ShadowFindingSerializer(serializers.Serializer):
    name = serializers.CharField()
    compared = serializers.IntegerField(help_text="Predictions both versions scored.")
    agreement = serializers.FloatField(
        allow_null=True, help_text="Share with the same call at each own threshold."
    )
    agreement_ci = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    kappa = serializers.FloatField(allow_null=True, help_text="Cohen's kappa of the two calls.")
    kappa_ci = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    live_auroc = serializers.FloatField(allow_null=True)
    live_auroc_ci = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    shadow_auroc = serializers.FloatField(allow_null=True)
    shadow_auroc_ci = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    positives = serializers.IntegerField(help_text="Feedback marks 'present' on compared predictions.")
    negatives = serializers.IntegerField(help_text="Feedback marks 'absent' on compared predictions.")
    evaluable = serializers.BooleanField(help_text="Enough marks of both kinds for an AUROC.")


class ShadowComparisonSerializer(serializers.Serializer):
    shadow = serializers.SerializerMethodField()
    n_predictions = serializers.IntegerField()
    min_positives = serializers.IntegerField()
    live_mean_auroc = serializers.JSONField(allow_null=True)
    shadow_mean_auroc = serializers.JSONField(allow_null=True)
    latency = serializers.JSONField(allow_null=True, help_text="{shadow, live}: {n, median_ms, p95_ms}.")
    findings = ShadowFindingSerializer(many=True)

    @extend_schema_field(
        {
            "type": "object",
            "nullable": True,
            "properties": {"id": {"type": "integer"}, "version_name": {"type": "string"}},
            "description": "The shadow version; null when no version is the shadow.",
        }
    )
    def get_shadow(self, comparison) -> dict | None:
        version = comparison["version"]
        return None if version is None else {"id": version.pk, "version_name": version.version_name}


class ShadowComparisonApi(APIView):
    permission_classes = [IsModelAdmin]

    @extend_schema(
        operation_id="models_shadow_retrieve",
        summary="The shadow version against the live versions",
        description=(
            "Counts, agreement (Wilson 95 % interval), Cohen's kappa (bootstrap 95 % interval), the AUROC "
            "of each on feedback-labelled predictions (95 % interval; not evaluable below the minimum of "
            "positives) and latency. `shadow` is null when no version is the shadow. Model-admins only."
        ),
        responses={200: ShadowComparisonSerializer, **error_responses(401, 403)},
        tags=["models"],
    )
    def get(self, request):
        from learning.shadow import shadow_comparison, shadow_version_get

        shadow = shadow_version_get()
        if shadow is None:
            comparison = {
                "version": None,
                "n_predictions": 0,
                "min_positives": int(settings.LUNGSITE_EVAL_MIN_POSITIVES),
                "live_mean_auroc": None,
                "shadow_mean_auroc": None,
                "latency": None,
                "findings": [],
            }
        else:
            comparison = shadow_comparison(version=shadow)
        return Response(ShadowComparisonSerializer(comparison).data)


class EvaluationSerializer(serializers.ModelSerializer):
    version = serializers.CharField(source="version.version_name")
    version_id = serializers.IntegerField()
    mean_auroc_ci = serializers.ListField(child=serializers.FloatField(), allow_null=True)
    in_force = serializers.SerializerMethodField()

    class Meta:
        model = Evaluation
        fields = [
            "id",
            "version",
            "version_id",
            "created_at",
            "evaluation_set",
            "set_sha256",
            "kind",
            "in_force",
            "n_images",
            "mean_auroc",
            "mean_auroc_ci",
            "per_class",
            "details",
            "ood_threshold",
            "outputs",
        ]
        read_only_fields = fields

    def get_in_force(self, evaluation) -> bool:
        current = evaluation.version.evaluation_in_force()
        return current is not None and current.pk == evaluation.pk


class EvaluationDetailApi(APIView):
    permission_classes = [CanViewModels]

    @extend_schema(
        operation_id="evaluations_retrieve",
        summary="Read an evaluation with its outputs",
        description=(
            "Every figure of one evaluation (per-finding AUROC with 95 % interval, mean with interval, "
            "calibration, thresholds, subgroups, out-of-distribution threshold) and the outputs behind them: "
            "image names, hashed patient groups (the resampling unit), labels, served and raw scores."
        ),
        responses={200: EvaluationSerializer, **error_responses(401, 403, 404)},
        tags=["models"],
    )
    def get(self, request, pk: int):
        evaluation = (
            Evaluation.objects.defer("ood_reference").select_related("version").filter(pk=pk).first()
            if pk <= MAX_ID
            else None
        )
        if evaluation is None:
            raise exceptions.NotFound(f"Evaluation {pk} not found.")
        return Response(EvaluationSerializer(evaluation).data)
