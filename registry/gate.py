"""The evaluation gate on activation: why a version should not serve, or None. Read by the one
activation service (registry.services.model_version_activate) and shown by the admin. A model-admin
may activate a refused version with a written reason, which the activation history keeps."""

from __future__ import annotations

from django.conf import settings

from registry.models import Evaluation, ModelVersion


def _latest_per_set(version: ModelVersion) -> dict[str, Evaluation]:
    latest: dict[str, Evaluation] = {}
    held_out = version.evaluations.filter(kind=Evaluation.HELD_OUT).defer("outputs", "ood_reference")
    for evaluation in held_out.order_by("created_at", "id"):
        latest[evaluation.set_sha256] = evaluation
    return latest


def _figure(evaluation: Evaluation) -> str:
    ci = evaluation.mean_auroc_ci
    interval = f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else " (no interval)"
    return f"{evaluation.mean_auroc:.3f}{interval}"


def activation_gate(version: ModelVersion) -> str | None:
    """Why `version` should not become active, or None:
    - it has no held-out evaluation (never evaluated, or only on images that trained or tuned it);
    - its evaluation in force is at chance level (NOT VALIDATED: the mean-AUROC interval includes
      0.5, the mean is below LUNGSITE_AUROC_FLOOR, or no finding could be evaluated), whatever the
      active version is;
    - on an evaluation set the active version was also evaluated on (same images and labels), its
      mean-AUROC interval lies entirely below the active version's. Means whose intervals overlap
      are not told apart: the difference is within what chance explains on that set."""
    if not getattr(settings, "LUNGSITE_ACTIVATION_GATE", True):
        return None
    evaluation = version.evaluation_in_force()
    if evaluation is None:
        return (
            f"{version.version_name} has no evaluation on held-out images; evaluate it (manage.py "
            "evaluate_model) on images it was not trained on first."
        )
    why = evaluation.chance_level_reason()
    if why:
        return f"{version.version_name} is NOT VALIDATED: {why}"
    active = ModelVersion.objects.filter(is_active=True).exclude(pk=version.pk).first()
    if active is None:
        return None
    theirs = _latest_per_set(active)
    for set_sha256, mine in _latest_per_set(version).items():
        other = theirs.get(set_sha256)
        if other is None or mine.mean_auroc is None or other.mean_auroc is None:
            continue
        if mine.mean_auroc_ci and other.mean_auroc_ci and mine.mean_auroc_high < other.mean_auroc_low:
            return (
                f"On {mine.evaluation_set} {version.version_name} has a mean AUROC of {_figure(mine)}, "
                f"below the active {active.version_name}'s {_figure(other)}: the intervals do not overlap."
            )
    return None
