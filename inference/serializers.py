"""Serializers of the prediction API: the JSON of DESIGN.md "Interfaces", built from an audit row."""

import re

from django.urls import reverse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_-]+")
_FINDING_KEYS = frozenset(("name", "probability", "threshold", "positive"))


# DRF's own field instances, used unbound for their conversions (they read no parent). Module-level:
# a field set on a serializer class would become one of its declared fields.
_CREATED_AT = serializers.DateTimeField()
_POSITIVE = serializers.BooleanField()


def _maybe(convert, value):
    """A field's conversion, or None for None (as DRF's Serializer.to_representation skips it)."""
    return None if value is None else convert(value)


UNTRAINED_WARNING = (
    "UNTRAINED model: this result comes from a network with random weights. Its scores carry no "
    "medical meaning and must not be used for any clinical decision."
)


class PredictionUploadSerializer(serializers.Serializer):
    image = serializers.FileField(
        help_text="The chest X-ray: PNG, JPEG or DICOM, at most LUNGSITE_MAX_UPLOAD_MB (default 50) MB."
    )


class PredictionFilterSerializer(serializers.Serializer):
    model = serializers.CharField(
        required=False, help_text="Only predictions made by this model version: its id or its name."
    )
    created_after = serializers.DateTimeField(
        required=False,
        help_text="Only predictions created at or after this time (ISO 8601; a date means 00:00 UTC).",
    )
    created_before = serializers.DateTimeField(
        required=False,
        help_text="Only predictions created before this time (ISO 8601; a date means 00:00 UTC).",
    )

    def validate(self, attrs):
        after, before = attrs.get("created_after"), attrs.get("created_before")
        if after and before and after >= before:
            raise serializers.ValidationError("created_after must be earlier than created_before.")
        return attrs


class PredictionModelSerializer(serializers.Serializer):
    id = serializers.IntegerField()
    version_name = serializers.CharField()
    sha256 = serializers.CharField(help_text="sha256 of the weights file that produced the result.")
    untrained = serializers.BooleanField(help_text="True: random weights, the scores mean nothing.")


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

    def to_representation(self, prediction) -> dict:
        """The fields declared above, each converted as that field converts it, built directly:
        DRF's generic path deep-copies and binds every declared field for each serializer
        (0.6-1.2 ms a response on a 2-core VM, most of a response's cost). A row whose results are
        not in the shape prediction_log writes takes the generic path."""
        results = prediction.results_json
        findings = results.get("findings") if type(results) is dict else None
        if type(findings) is not list or not all(
            type(finding) is dict and finding.keys() >= _FINDING_KEYS for finding in findings
        ):
            return super().to_representation(prediction)
        return {
            "id": _maybe(int, prediction.pk),
            "created_at": _CREATED_AT.to_representation(prediction.created_at),
            "model": self.get_model(prediction),
            "findings": [
                {
                    "name": _maybe(str, finding["name"]),
                    "probability": _maybe(float, finding["probability"]),
                    "threshold": _maybe(float, finding["threshold"]),
                    "positive": _maybe(_POSITIVE.to_representation, finding["positive"]),
                }
                for finding in findings
            ],
            "heatmaps": self.get_heatmaps(prediction),
            "image_sha256": _maybe(str, prediction.image_sha256),
            "image_url": self.get_image_url(prediction),
            "warning": self.get_warning(prediction),
        }

    @extend_schema_field(PredictionModelSerializer)
    def get_model(self, prediction) -> dict:
        # The version recorded with the result is the one that produced it, even if the row's
        # foreign key were ever read from a later state.
        recorded = (prediction.results_json or {}).get("model")
        if recorded:
            # As PredictionModelSerializer would give it, without building one per response.
            return {
                "id": int(recorded["id"]),
                "version_name": str(recorded["version_name"]),
                "sha256": str(recorded["sha256"]),
                "untrained": bool(recorded["untrained"]),
            }
        return PredictionModelSerializer(prediction.model).data

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
        # One reverse() per response rather than one per finding: a name of letters, digits, "_"
        # and "-" goes into the URL as it is, as reverse() would put it; anything else is reversed.
        path = reverse("api-prediction-heatmap", kwargs={"pk": prediction.pk, "name": "x"})
        prefix = self._absolute(path[: -len("x.png")])
        return {
            name: f"{prefix}{name}.png"
            if _PLAIN_NAME.fullmatch(name)
            else self._absolute(reverse("api-prediction-heatmap", kwargs={"pk": prediction.pk, "name": name}))
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
        recorded = (prediction.results_json or {}).get("model")
        untrained = recorded["untrained"] if recorded else prediction.model.untrained
        if untrained:
            return UNTRAINED_WARNING
        # A version with no measured evaluation when this result was made says so (issue 23).
        return prediction.model.honesty_warning(at=prediction.created_at)

    def _absolute(self, path: str) -> str:
        request = self.context.get("request")
        return request.build_absolute_uri(path) if request is not None else path
