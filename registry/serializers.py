"""How a model version is shown as JSON: one serializer, used by the registry API, the prediction
API (the summary), /healthz and the registry commands."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from registry.models import PUBLISHED_AUROC_LABEL, ModelVersion


class PreprocessingSerializer(serializers.Serializer):
    """engine.preprocessing: value range, crop, resize, then (x - mean) / std per channel."""

    input_size = serializers.IntegerField(help_text="Side of the square network input, in pixels.")
    channels = serializers.IntegerField(help_text="3 (the grey image repeated) or 1.")
    value_range = serializers.ListField(
        child=serializers.FloatField(), help_text="The [0, 1] picture mapped linearly onto [low, high] first."
    )
    crop = serializers.CharField(help_text='"none", or "center": the centred square of the shorter side.')
    resize = serializers.CharField(help_text='"bilinear" (Pillow) or "skimage" (TorchXRayVision\'s resizer).')
    mean = serializers.ListField(child=serializers.FloatField())
    std = serializers.ListField(child=serializers.FloatField())


class PublishedAurocSerializer(serializers.Serializer):
    per_class = serializers.DictField(child=serializers.FloatField())
    source = serializers.CharField()
    status = serializers.SerializerMethodField(help_text='Always "published, not measured here".')

    def get_status(self, value) -> str:
        return PUBLISHED_AUROC_LABEL


class ModelVersionSerializer(serializers.ModelSerializer):
    class_names = serializers.ListField(
        child=serializers.CharField(), help_text="Finding names, in the order of the model's outputs."
    )
    preprocessing = PreprocessingSerializer(source="preprocessing_spec")
    published_auroc = serializers.SerializerMethodField()
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
            "published_auroc",
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

    @extend_schema_field(PublishedAurocSerializer(allow_null=True))
    def get_published_auroc(self, version: ModelVersion) -> dict | None:
        """AUROC published with the weights, or null: a claim, never an evaluation (the warning and
        the evaluation gate ignore it)."""
        if not (version.published_auroc or {}).get("per_class"):
            return None
        return PublishedAurocSerializer(version.published_auroc).data

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
