"""Serializers of the prediction API: the JSON of the README's REST API, built from an audit row."""

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
    """One finding of a result. `score` is always the version's output for it; it is named a
    probability only where the version's calibration covers the finding (then `probability` holds
    the same number and `calibrated` is true); otherwise `probability` is null: an uncalibrated
    score (e.g. from class-balanced training) is not the chance that the finding is present."""

    name = serializers.CharField()
    score = serializers.SerializerMethodField(help_text="The version's output for this finding, 0 to 1.")
    probability = serializers.SerializerMethodField(
        help_text="The same number when it is a calibrated probability (`calibrated`); else null."
    )
    calibrated = serializers.SerializerMethodField(
        help_text="True when the version's calibration, fitted on labelled images, maps this score to a "
        "probability."
    )
    threshold = serializers.FloatField()
    positive = serializers.BooleanField(help_text="score >= threshold")

    def get_score(self, finding) -> float:
        return finding["probability"]

    @extend_schema_field({"type": "number", "nullable": True, "minimum": 0.0, "maximum": 1.0})
    def get_probability(self, finding) -> float | None:
        return finding["probability"] if finding.get("calibrated") else None

    def get_calibrated(self, finding) -> bool:
        return bool(finding.get("calibrated"))


class HonestySerializer(serializers.Serializer):
    state = serializers.ChoiceField(
        choices=["untrained", "not_evaluated", "not_validated", "evaluated"],
        help_text="What is known of the version that made the result, when it made it.",
    )
    statement = serializers.CharField(allow_null=True, help_text="The warning to show with the result.")
    evaluation_id = serializers.IntegerField(
        allow_null=True,
        required=False,
        help_text="The held-out evaluation in force when the result was made.",
    )
    outside = serializers.BooleanField(
        required=False, help_text="The image lies outside what that evaluation measured (see `ood`)."
    )


class OodSerializer(serializers.Serializer):
    distance = serializers.FloatField(help_text="Mahalanobis distance of the image's pooled features.")
    threshold = serializers.FloatField(help_text="Past it, outside what the version was evaluated on.")
    outside = serializers.BooleanField()
    evaluation_id = serializers.IntegerField()


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
    honesty = serializers.SerializerMethodField()
    ood = serializers.SerializerMethodField()

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
            "description": "Set when the model is untrained, not evaluated or not validated, or the image is "
            "outside what it was evaluated on: do not rely on the result.",
        }
    )
    def get_warning(self, prediction) -> str | None:
        # As recorded when the result was made (analysis.results): a later evaluation of the
        # version never changes what this result says.
        return prediction.honesty_statement

    @extend_schema_field(HonestySerializer)
    def get_honesty(self, prediction) -> dict:
        return HonestySerializer(prediction.honesty).data

    @extend_schema_field(OodSerializer(allow_null=True))
    def get_ood(self, prediction) -> dict | None:
        ood = (prediction.results_json or {}).get("ood")
        return OodSerializer(ood).data if ood else None

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path


def _recorded_model(prediction) -> dict | None:
    results = prediction.results_json
    return results.get("model") if isinstance(results, dict) else None
