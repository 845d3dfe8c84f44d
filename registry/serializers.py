"""How a model version is shown as JSON: one serializer, used by the registry API, the prediction
API (the summary), /healthz and the registry commands."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from registry.models import ModelVersion


class PreprocessingSerializer(serializers.Serializer):
    input_size = serializers.IntegerField(help_text="Side of the square network input, in pixels.")
    channels = serializers.IntegerField()
    mean = serializers.ListField(child=serializers.FloatField())
    std = serializers.ListField(child=serializers.FloatField())


class ModelVersionSerializer(serializers.ModelSerializer):
    class_names = serializers.ListField(
        child=serializers.CharField(), help_text="Finding names, in the order of the model's outputs."
    )
    preprocessing = PreprocessingSerializer()
    thresholds = serializers.SerializerMethodField()
    per_class_auroc = serializers.DictField(
        child=serializers.FloatField(allow_null=True),
        help_text="AUROC per finding from `manage.py evaluate_model` (empty until evaluated).",
    )
    warning = serializers.SerializerMethodField()
    serving_graph_sha256 = serializers.CharField(
        help_text="sha256 of the ONNX serving graph exported from the weights at registration: what the "
        "workers run in ONNX Runtime. Empty only for a version registered before graphs were stored, "
        "until `manage.py bootstrap` or its activation writes one."
    )

    class Meta:
        model = ModelVersion
        fields = [
            "id",
            "version_name",
            "created_at",
            "is_active",
            "activated_at",
            "sha256",
            "serving_graph_sha256",
            "architecture",
            "class_names",
            "preprocessing",
            "thresholds",
            "accuracy_auroc",
            "per_class_auroc",
            "untrained",
            "notes",
            "warning",
        ]
        read_only_fields = fields

    @extend_schema_field(
        {
            "type": "object",
            "additionalProperties": {"type": "number"},
            "description": "Decision threshold of every finding (0.5 where none was registered).",
        }
    )
    def get_thresholds(self, version: ModelVersion) -> dict:
        return {name: version.threshold_for(name) for name in version.class_names}

    @extend_schema_field(
        {
            "type": "string",
            "nullable": True,
            "description": "Set when the version is untrained or not evaluated: do not rely on its scores.",
        }
    )
    def get_warning(self, version: ModelVersion) -> str | None:
        return version.honesty_warning()


class ModelVersionSummarySerializer(serializers.Serializer):
    """Which version produced a result: in every prediction response and in /healthz. Reads a
    ModelVersion or the dict of the same keys recorded with a prediction. A plain Serializer, not
    the ModelSerializer above: that one introspects the model each time it is built, which cost
    ~10x the rest of a prediction response (see the issue 19 note)."""

    id = serializers.IntegerField()
    version_name = serializers.CharField()
    sha256 = serializers.CharField(help_text="sha256 of the weights file that produced the result.")
    untrained = serializers.BooleanField(help_text="True: random weights, the scores mean nothing.")
