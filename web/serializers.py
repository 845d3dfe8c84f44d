"""Serializers of the prediction API: the JSON of DESIGN.md "Interfaces", built from an audit row."""

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from common.fields import InstantField, TextField
from registry.serializers import ModelVersionSummarySerializer


class PredictionUploadSerializer(serializers.Serializer):
    image = serializers.FileField(
        # An empty file is the analysis core's to refuse (400 `empty`), as at every other door.
        allow_empty_file=True,
        help_text="The chest X-ray: PNG, JPEG or DICOM, at most LUNGSITE_MAX_UPLOAD_MB (default 50) MB.",
    )

    def validate_image(self, image):
        # DRF keeps the last of several files sent under one name; analysing one of them silently
        # would be a guess.
        getlist = getattr(self.initial_data, "getlist", None)
        sent = len(getlist("image")) if getlist else 1
        if sent > 1:
            raise serializers.ValidationError(f"Send one image per request ({sent} files were sent).")
        return image


class PredictionFilterSerializer(serializers.Serializer):
    """The list's filters. Empty values mean "no filter"; a range whose start is not before its end
    (`created_after` >= `created_before`, equal included) is valid and empty."""

    model = TextField(
        required=False,
        allow_blank=True,
        help_text="Only predictions made by this model version: its id or its name (empty: any).",
    )
    created_after = InstantField(
        required=False,
        help_text="Only predictions created at or after this time (RFC 3339 with offset; a date means "
        "00:00 UTC; empty: no bound).",
    )
    created_before = InstantField(
        required=False,
        help_text="Only predictions created before this time (RFC 3339 with offset; a date means 00:00 "
        "UTC; empty: no bound). Not after created_after: an empty list.",
    )


class FindingSerializer(serializers.Serializer):
    name = serializers.CharField()
    probability = serializers.FloatField(min_value=0.0, max_value=1.0)
    threshold = serializers.FloatField()
    positive = serializers.BooleanField(help_text="probability >= threshold")


class PredictionSerializer(serializers.Serializer):
    """A prediction as it was returned when it was made (rows are append-only)."""

    id = serializers.IntegerField()
    created_at = serializers.DateTimeField()
    model = serializers.SerializerMethodField()
    findings = FindingSerializer(many=True, source="results_json.findings")
    heatmaps = serializers.SerializerMethodField()
    image_sha256 = serializers.CharField(help_text="sha256 of the uploaded file.")
    image_url = serializers.SerializerMethodField()
    warning = serializers.SerializerMethodField()

    @extend_schema_field(ModelVersionSummarySerializer)
    def get_model(self, prediction) -> dict:
        # The version recorded with the result is the one that produced it, even if the row's
        # foreign key were ever read from a later state.
        return ModelVersionSummarySerializer(_recorded_model(prediction) or prediction.model).data

    @extend_schema_field(
        {
            "type": "object",
            "additionalProperties": {"type": "string", "format": "uri"},
            "description": "Finding name to the URL of its Grad-CAM overlay (PNG, same credentials).",
        }
    )
    def get_heatmaps(self, prediction) -> dict:
        stored = prediction.heatmaps or {}
        names = [finding["name"] for finding in prediction.results_json.get("findings", [])]
        return {
            name: self._absolute(
                reverse("api-prediction-heatmap", kwargs={"pk": prediction.pk, "name": name})
            )
            for name in names
            if not stored or name in stored
        }

    @extend_schema_field(OpenApiTypes.URI)
    def get_image_url(self, prediction) -> str:
        return self._absolute(reverse("api-prediction-image", kwargs={"pk": prediction.pk}))

    @extend_schema_field(
        {
            "type": "string",
            "nullable": True,
            "description": "Set when the model is untrained or was not evaluated: do not rely on the result.",
        }
    )
    def get_warning(self, prediction) -> str | None:
        # As recorded when the result was made (analysis.results): a later evaluation of the
        # version never changes what this result says.
        return prediction.honesty_statement

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


def _recorded_model(prediction) -> dict | None:
    results = prediction.results_json
    return results.get("model") if isinstance(results, dict) else None
