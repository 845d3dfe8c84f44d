"""The evaluation gate on activation: why a version should not serve, or None. Read by the one
activation service (registry.services.model_version_activate) and shown by the admin."""

from __future__ import annotations

from django.conf import settings

from registry.models import ModelVersion


def activation_gate(version: ModelVersion) -> str | None:
    """Why `version` should not become active, or None: it was never evaluated, or the active
    version's mean AUROC on the same evaluation set (same images and labels) is higher."""
    if not getattr(settings, "LUNGSITE_ACTIVATION_GATE", True):
        return None
    mine = list(version.evaluations.exclude(mean_auroc=None))
    if not mine:
        return f"{version.version_name} has no evaluation; evaluate it (manage.py evaluate_model) first."
    active = ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).first()
    if active is None:
        return None
    theirs = {e.set_sha256: e for e in active.evaluations.exclude(mean_auroc=None).order_by("created_at")}
    for evaluation in sorted(mine, key=lambda e: e.created_at):
        other = theirs.get(evaluation.set_sha256)
        if other is not None and evaluation.mean_auroc < other.mean_auroc:
            return (
                f"On {evaluation.evaluation_set} {version.version_name} has a mean AUROC of "
                f"{evaluation.mean_auroc:.3f}, below the active {active.version_name}'s "
                f"{other.mean_auroc:.3f}."
            )
    return None
