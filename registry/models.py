from __future__ import annotations

from django.conf import settings
from django.db import models
from django.db.models import OuterRef, ProtectedError, Q, Subquery
from django.utils import timezone

# One exception for "append-only" across the project: the prediction log and the activation history.
from common.append_only import AppendOnlyError
from engine.preprocessing import IMAGENET, preprocessing_complete

# The 13 findings of the starter model, in the order of its outputs: NIH ChestX-ray14 without Hernia.
DEFAULT_CLASS_NAMES = [
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Emphysema",
    "Fibrosis",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pleural_Thickening",
    "Pneumonia",
    "Pneumothorax",
]

# The ImageNet profile (engine.preprocessing): 224 px, three channels, ImageNet mean and std.
DEFAULT_PREPROCESSING = dict(IMAGENET)

PUBLISHED_AUROC_LABEL = "published, not measured here"


# Said with every result of such a version: on pages, in API and job responses, in DICOM objects.
UNTRAINED_WARNING = (
    "UNTRAINED model: this result comes from a network with random weights. Its scores carry no "
    "medical meaning and must not be used for any clinical decision."
)
NOT_EVALUATED_WARNING = (
    "NOT EVALUATED model: this version has no measured evaluation on a labelled set, so how well its "
    "scores separate findings is unknown. Do not use them for any clinical decision."
)
NOT_VALIDATED_WARNING = (
    "NOT VALIDATED model: {why} Its scores are not shown to separate findings better than chance; do "
    "not use them for any clinical decision."
)
OUTSIDE_WARNING = (
    "OUTSIDE WHAT THIS VERSION WAS EVALUATED ON: this image's features lie further from those of the "
    "images its evaluation measured (distance {distance:.1f}, threshold {threshold:.1f}) than almost all "
    "of those images do. It may not be an adult frontal chest radiograph like them, and its scores may "
    "not mean what the evaluation says."
)


# `ModelVersion.honesty(evaluation=...)` default: look the evaluation in force up.
LOOK_UP = object()


class ModelVersion(models.Model):
    """One weights file and what is known about it. The seed columns keep the original app's names."""

    created_at = models.DateTimeField(auto_now_add=True)
    version_name = models.CharField(max_length=200, unique=True)
    storage_path = models.TextField(help_text="Name of the weights file in the 'models' storage.")
    is_active = models.BooleanField(default=False)
    accuracy_auroc = models.FloatField(null=True, blank=True, help_text="Mean AUROC over classes.")
    class_names = models.JSONField(help_text="Finding names, ordered as the model's outputs.")

    sha256 = models.CharField(max_length=64, db_index=True)
    architecture = models.CharField(max_length=50, default="densenet121")
    preprocessing = models.JSONField(default=dict)
    thresholds = models.JSONField(default=dict, blank=True)
    per_class_auroc = models.JSONField(default=dict, blank=True)
    untrained = models.BooleanField(
        default=False, help_text="Random weights: its outputs carry no medical meaning."
    )
    notes = models.TextField(blank=True)
    PRECISION_CHOICES = [("fp32", "FP32"), ("int8", "INT8 (quantized)")]
    precision = models.CharField(
        max_length=8,
        choices=PRECISION_CHOICES,
        default="fp32",
        help_text="The serving graph's arithmetic: FP32 as exported, or INT8 (static quantization, "
        "calibrated on real images at registration).",
    )
    serving_graph_path = models.TextField(
        blank=True,
        default="",
        help_text="Name of the ONNX serving graph exported from the weights at registration, in the "
        "'models' storage. Empty only for a version registered before graphs were stored, until "
        "`manage.py bootstrap` or its activation writes one.",
    )
    serving_graph_sha256 = models.CharField(max_length=64, blank=True, default="")
    activated_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    # The latest measured evaluation (learning.evaluation_services); the full record of each one is
    # an Evaluation row. A version with no evaluated_at says "not evaluated" wherever it serves.
    evaluation_set = models.CharField(max_length=300, blank=True, default="")
    evaluated_at = models.DateTimeField(null=True, blank=True)
    per_class_counts = models.JSONField(
        default=dict, blank=True, help_text="Class name to {positives, negatives} behind its AUROC."
    )
    model_card = models.JSONField(default=dict, blank=True, help_text="Training data, split, results.")
    calibration = models.JSONField(
        default=dict,
        blank=True,
        help_text="Per-finding calibration applied in serving (learning.calibration): {method, per_class: "
        "{name: {a, b}}, fitted_on, evaluation_id}. Empty: scores are served uncalibrated.",
    )
    is_shadow = models.BooleanField(
        default=False, help_text="Scores live predictions off the record; never shown to clinicians."
    )
    # Claims that came with the weights: never an evaluation (registry.gate reads Evaluation rows,
    # the honesty states read evaluated_at; neither reads this).
    published_auroc = models.JSONField(
        default=dict,
        blank=True,
        help_text='AUROC per finding as published with the weights, {"per_class": {name: auroc}, '
        '"source": "where it was published"}: published, not measured here.',
    )
    weights_source = models.JSONField(
        default=dict,
        blank=True,
        help_text="Where the weights came from and what registration did to them (e.g. TorchXRayVision: "
        "the file's sha256, its outputs, which were served or dropped, its op_threshs).",
    )

    class Meta:
        db_table = "models"
        ordering = ["-created_at", "-id"]
        verbose_name = "model version"
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="models_one_active"
            ),
            models.UniqueConstraint(
                fields=["is_shadow"], condition=Q(is_shadow=True), name="models_one_shadow"
            ),
        ]
        permissions = [("activate_modelversion", "Can activate a model version")]

    def __str__(self) -> str:
        return self.version_name

    @property
    def short_sha256(self) -> str:
        return self.sha256[:12]

    @property
    def preprocessing_spec(self) -> dict:
        """The preprocessing with every key (rows from before a key existed get its old meaning)."""
        return preprocessing_complete(self.preprocessing)

    def threshold_for(self, name: str) -> float:
        return float((self.thresholds or {}).get(name, 0.5))

    def evaluation_in_force(self, *, at=None) -> Evaluation | None:
        """The evaluation that speaks for this version at `at` (now by default): the latest held-out
        one made by then. Validation and in-sample evaluations never are (their images chose the
        epoch, thresholds or calibration, or trained the version)."""
        if self.pk is None:
            return None
        evaluations = self.evaluations.filter(kind=Evaluation.HELD_OUT)
        if at is not None:
            evaluations = evaluations.filter(created_at__lte=at)
        return evaluations.defer("outputs", "ood_reference").order_by("-created_at", "-id").first()

    def honesty(self, *, at=None, evaluation=LOOK_UP, ood: dict | None = None) -> dict:
        """What every output made with this version must say: {"state", "statement",
        "evaluation_id", "outside"}. The state is "untrained" (random weights), "not_evaluated" (no
        held-out evaluation existed at `at`, e.g. when a prediction was made; now by default),
        "not_validated" (the evaluation in force is at chance level: its mean-AUROC interval
        includes 0.5, its mean is below LUNGSITE_AUROC_FLOOR, or no finding had enough cases to be
        measured) or "evaluated"; `evaluation_id` names the evaluation in force (`evaluation`, or
        looked up when not given). `ood` is one image's out-of-distribution assessment
        (learning.ood); when it is outside, the statement says so too. The statement is the
        warning to show, or None. The analysis core records this dict on each prediction when it is
        made, so later evaluations never change what an earlier result says."""
        if evaluation is LOOK_UP:
            evaluation = self.evaluation_in_force(at=at)
        outside = bool(ood and ood.get("outside"))
        result = {"evaluation_id": evaluation.pk if evaluation is not None else None, "outside": outside}
        if self.untrained:
            result |= {"state": "untrained", "statement": UNTRAINED_WARNING}
        elif evaluation is None:
            result |= {"state": "not_evaluated", "statement": NOT_EVALUATED_WARNING}
        else:
            why = evaluation.chance_level_reason()
            if why:
                result |= {"state": "not_validated", "statement": NOT_VALIDATED_WARNING.format(why=why)}
            else:
                result |= {"state": "evaluated", "statement": None}
        if self.precision == "int8":
            from registry.quantization import precision_statement

            note = precision_statement((self.model_card or {}).get("serving_precision"))
            result["statement"] = f"{result['statement']} {note}" if result["statement"] else note
        if outside:
            warning = OUTSIDE_WARNING.format(distance=ood["distance"], threshold=ood["threshold"])
            result["statement"] = f"{result['statement']} {warning}" if result["statement"] else warning
        return result

    def honesty_warning(self, *, at=None) -> str | None:
        return self.honesty(at=at)["statement"]

    def was_ever_active(self) -> bool:
        """True once the version has served: its row then explains audit rows and history, so it stays."""
        if self.pk is None:
            return False
        return self.is_active or self.activated_at is not None or self.activation_events.exists()

    def delete(self, *args, **kwargs):
        if self.was_ever_active():
            raise ProtectedError(
                f"Model version {self.version_name} was active once; its row is kept for the audit "
                "trail and the activation history.",
                set(self.activation_events.all()),
            )
        return super().delete(*args, **kwargs)


class ActivationEventQuerySet(models.QuerySet):
    def update(self, **kwargs):
        raise AppendOnlyError("The activation history is append-only: rows cannot be updated.")

    def delete(self):
        raise AppendOnlyError("The activation history is append-only: rows cannot be deleted.")

    def with_deactivated_at(self):
        """Annotates `deactivated_at`: when the next activation replaced this one (None while it is
        the latest). Activations are serialised by the activation service, so id order is time order."""
        following = ActivationEvent.objects.filter(id__gt=OuterRef("id")).order_by("id")
        return self.annotate(deactivated_at=Subquery(following.values("activated_at")[:1]))


class ActivationEvent(models.Model):
    """One activation: which version became active, when, by whom, replacing which. Append-only:
    on Postgres a trigger refuses UPDATE and DELETE; everywhere the model layer refuses them too.
    A version was active from its event's `activated_at` until the next event's."""

    # The application's database role may only read and append (common.db_roles).
    database_privileges = ("SELECT", "INSERT")

    VIA_ADMIN = "admin"
    VIA_COMMAND = "command"
    VIA_API = "api"
    VIA_BOOTSTRAP = "bootstrap"
    VIA_MIGRATION = "migration"
    VIA_CHOICES = [
        (VIA_ADMIN, "Django admin"),
        (VIA_COMMAND, "Management command"),
        (VIA_API, "REST API"),
        (VIA_BOOTSTRAP, "Bootstrap"),
        (VIA_MIGRATION, "Recorded by migration (active before history existed)"),
    ]

    version = models.ForeignKey(ModelVersion, on_delete=models.PROTECT, related_name="activation_events")
    previous = models.ForeignKey(
        ModelVersion,
        null=True,
        blank=True,
        on_delete=models.PROTECT,
        related_name="+",
        help_text="The version that was active just before (empty for the first activation).",
    )
    activated_at = models.DateTimeField(default=timezone.now, db_index=True)
    # PROTECT, not SET_NULL: nulling the column would be an UPDATE, which the history refuses.
    activated_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.PROTECT, related_name="+"
    )
    via = models.CharField(max_length=16, choices=VIA_CHOICES)
    reason = models.CharField(max_length=200, blank=True, help_text='e.g. "rollback".')
    override_reason = models.TextField(
        blank=True,
        default="",
        help_text="Why a model-admin activated a version the evaluation gate refused (written by them).",
    )

    objects = ActivationEventQuerySet.as_manager()

    class Meta:
        db_table = "model_activations"
        ordering = ["-id"]
        verbose_name = "activation event"

    def __str__(self) -> str:
        return f"{self.version} activated at {self.activated_at:%Y-%m-%d %H:%M:%S}"

    def save(self, *args, **kwargs):
        if not self._state.adding:
            raise AppendOnlyError("The activation history is append-only: rows cannot be updated.")
        super().save(*args, **kwargs)

    def delete(self, *args, **kwargs):
        raise AppendOnlyError("The activation history is append-only: rows cannot be deleted.")

    def why(self) -> str:
        """What the history says of why: "rollback", or the gate's override with the reason written."""
        if self.override_reason:
            return f"{self.reason or 'evaluation gate overridden'}: {self.override_reason}"
        return self.reason


class Evaluation(models.Model):
    """One measured evaluation of a version on a labelled set: per-class AUROC with its 95 %
    bootstrap interval and the positives and negatives behind it, the mean with its interval,
    calibration, thresholds and subgroups (`details`), the reference of the version's features on
    these images (`ood_reference`), and the outputs themselves, so every figure can be recomputed
    from the row (learning.evaluation_services writes it)."""

    HELD_OUT, VALIDATION, IN_SAMPLE = "held_out", "validation", "in_sample"
    KIND_CHOICES = [
        (HELD_OUT, "Held out: images the version never saw"),
        (VALIDATION, "Validation: images that chose its epoch, thresholds or calibration"),
        (IN_SAMPLE, "In sample: includes images it was trained on"),
    ]

    version = models.ForeignKey(ModelVersion, on_delete=models.CASCADE, related_name="evaluations")
    created_at = models.DateTimeField(default=timezone.now, db_index=True)
    evaluation_set = models.CharField(max_length=300, help_text="What was scored, in words.")
    set_sha256 = models.CharField(
        max_length=64, db_index=True, help_text="sha256 of the image ids and labels: same set, same hash."
    )
    n_images = models.PositiveIntegerField()
    kind = models.CharField(
        max_length=10,
        choices=KIND_CHOICES,
        default=HELD_OUT,
        help_text="Only a held-out evaluation speaks for the version (ModelVersion.evaluation_in_force).",
    )
    per_class = models.JSONField(
        help_text="Class name to {auroc, ci, positives, negatives, evaluable, reason}; auroc is None "
        "where the finding had too few positives or negatives to be evaluated."
    )
    mean_auroc = models.FloatField(null=True, blank=True, help_text="Mean over the evaluable findings.")
    mean_auroc_low = models.FloatField(null=True, blank=True, help_text="95 % bootstrap interval, low end.")
    mean_auroc_high = models.FloatField(null=True, blank=True, help_text="95 % bootstrap interval, high end.")
    details = models.JSONField(
        default=dict,
        blank=True,
        help_text="{settings, calibration, thresholds, subgroups, seen_images, notes}: see docs/trust.md.",
    )
    outputs = models.JSONField(
        default=dict,
        help_text="{images, patients (hashed), class_names, labels, scores (as served), raw_scores}.",
    )
    ood_reference = models.BinaryField(
        blank=True, default=b"", editable=False, help_text="The version's pooled features on these images."
    )
    ood_threshold = models.FloatField(
        null=True, blank=True, help_text="Distance past which an input is outside what was evaluated."
    )
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "model_evaluations"
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.version} on {self.evaluation_set}"

    @property
    def mean_auroc_ci(self) -> list[float] | None:
        if self.mean_auroc_low is None or self.mean_auroc_high is None:
            return None
        return [self.mean_auroc_low, self.mean_auroc_high]

    def chance_level_reason(self) -> str | None:
        """Why this evaluation does not show the version better than chance, or None: no finding
        could be evaluated, the mean has no interval, the interval includes 0.5, or the mean is below
        LUNGSITE_AUROC_FLOOR."""
        floor = float(getattr(settings, "LUNGSITE_AUROC_FLOOR", 0.6))
        minimum = (self.details or {}).get("settings", {}).get("min_positives")
        if self.mean_auroc is None:
            return (
                f"no finding of its evaluation on {self.evaluation_set} had enough positives and negatives "
                f"(at least {minimum or 'the minimum'} of each) to measure an AUROC."
            )
        if self.mean_auroc_low is None or self.mean_auroc_high is None:
            return (
                f"its mean AUROC on {self.evaluation_set} ({self.mean_auroc:.3f}) was recorded without a "
                "confidence interval; evaluate it again."
            )
        figure = (
            f"its mean AUROC on {self.evaluation_set} is {self.mean_auroc:.3f} "
            f"(95 % CI {self.mean_auroc_low:.3f}-{self.mean_auroc_high:.3f})"
        )
        if self.mean_auroc_low <= 0.5:
            return f"{figure}, an interval that includes 0.5 (chance)."
        if self.mean_auroc < floor:
            return f"{figure}, below the floor of {floor:.2f} this site requires."
        return None
