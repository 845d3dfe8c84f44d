"""How a model version is shown as JSON: one serializer, used by the registry API, the prediction
API (the summary), /healthz and the registry commands."""

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from registry.models import PUBLISHED_AUROC_LABEL, ActivationEvent, Evaluation, ModelVersion


class ActivationSerializer(serializers.ModelSerializer):
    activated_by = serializers.SerializerMethodField()
    previous = serializers.CharField(source="previous.version_name", default=None, allow_null=True)

    class Meta:
        model = ActivationEvent
        fields = ["activated_at", "activated_by", "via", "previous", "reason", "override_reason"]
        read_only_fields = fields

    def get_activated_by(self, event) -> str | None:
        return event.activated_by.get_username() if event.activated_by else None


class EvaluationSummarySerializer(serializers.ModelSerializer):
    """The evaluation that speaks for a version (held out), with its intervals."""

    mean_auroc_ci = serializers.ListField(
        child=serializers.FloatField(), allow_null=True, help_text="95 % bootstrap interval of the mean."
    )
    per_class = serializers.JSONField(
        help_text="Finding to {auroc, ci, positives, negatives, evaluable, reason}: auroc is null where "
        "the finding had too few positives or negatives to be evaluated."
    )

    class Meta:
        model = Evaluation
        fields = [
            "id",
            "created_at",
            "evaluation_set",
            "kind",
            "n_images",
            "mean_auroc",
            "mean_auroc_ci",
            "per_class",
            "ood_threshold",
        ]
        read_only_fields = fields


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
    honesty = serializers.SerializerMethodField()
    evaluation = serializers.SerializerMethodField()
    calibration = serializers.SerializerMethodField()
    activations = serializers.SerializerMethodField()
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
            "precision",
            "class_names",
            "preprocessing",
            "thresholds",
            "accuracy_auroc",
            "per_class_auroc",
            "published_auroc",
            "untrained",
            "notes",
            "warning",
            "honesty",
            "evaluation",
            "calibration",
            "activations",
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
        return self._honesty(version)["statement"]

    def _honesty(self, version: ModelVersion) -> dict:
        # One look-up of the evaluation in force per version and response.
        cache = self.context.setdefault("_honesty", {})
        if version.pk not in cache:
            evaluation = version.evaluation_in_force()
            cache[version.pk] = (version.honesty(evaluation=evaluation), evaluation)
        return cache[version.pk][0]

    @extend_schema_field(
        {
            "type": "object",
            "properties": {
                "state": {
                    "type": "string",
                    "enum": ["untrained", "not_evaluated", "not_validated", "evaluated"],
                },
                "statement": {"type": "string", "nullable": True},
                "evaluation_id": {"type": "integer", "nullable": True},
            },
        }
    )
    def get_honesty(self, version: ModelVersion) -> dict:
        honesty = self._honesty(version)
        return {key: honesty[key] for key in ("state", "statement", "evaluation_id")}

    @extend_schema_field(EvaluationSummarySerializer(allow_null=True))
    def get_evaluation(self, version: ModelVersion) -> dict | None:
        self._honesty(version)
        evaluation = self.context["_honesty"][version.pk][1]
        return EvaluationSummarySerializer(evaluation).data if evaluation is not None else None

    @extend_schema_field(
        {
            "type": "object",
            "description": "The calibration serving applies: {method, calibrated_findings, fitted_on, "
            "fitted_at}; calibrated_findings is empty when the scores are served uncalibrated.",
        }
    )
    def get_calibration(self, version: ModelVersion) -> dict:
        calibration = version.calibration or {}
        return {
            "method": calibration.get("method"),
            "calibrated_findings": sorted(
                name for name, entry in (calibration.get("per_class") or {}).items() if "a" in entry
            ),
            "fitted_on": calibration.get("fitted_on"),
            "fitted_at": calibration.get("fitted_at"),
        }

    @extend_schema_field(ActivationSerializer(many=True))
    def get_activations(self, version: ModelVersion) -> list:
        """The version's activation history, newest first, with any override of the gate."""
        events = version.activation_events.select_related("activated_by", "previous").order_by("-id")[:20]
        return ActivationSerializer(events, many=True).data


class ModelVersionSummarySerializer(serializers.Serializer):
    """Which version produced a result: in every prediction response and in /healthz. Reads a
    ModelVersion or the dict of the same keys recorded with a prediction. A plain Serializer, not
    the ModelSerializer above: that one introspects the model each time it is built, which cost
    ~10x the rest of a prediction response (see the issue 19 note)."""

    id = serializers.IntegerField()
    version_name = serializers.CharField()
    sha256 = serializers.CharField(help_text="sha256 of the weights file that produced the result.")
    untrained = serializers.BooleanField(help_text="True: random weights, the scores mean nothing.")
    precision = serializers.CharField(
        default="fp32", help_text='The serving graph\'s arithmetic: "fp32", or "int8" (quantized).'
    )
