from django.conf import settings
from django.db import models
from django.db.models import Q

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

DEFAULT_PREPROCESSING = {
    "input_size": 224,
    "channels": 3,
    "mean": [0.485, 0.456, 0.406],
    "std": [0.229, 0.224, 0.225],
}


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
    activated_at = models.DateTimeField(null=True, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )

    class Meta:
        db_table = "models"
        ordering = ["-created_at", "-id"]
        verbose_name = "model version"
        constraints = [
            models.UniqueConstraint(
                fields=["is_active"], condition=Q(is_active=True), name="models_one_active"
            ),
        ]
        permissions = [("activate_modelversion", "Can activate a model version")]

    def __str__(self) -> str:
        return self.version_name

    @property
    def short_sha256(self) -> str:
        return self.sha256[:12]

    def threshold_for(self, name: str) -> float:
        return float((self.thresholds or {}).get(name, 0.5))
