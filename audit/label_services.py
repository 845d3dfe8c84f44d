"""Writes of clinician feedback: marks are appended, never changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction

from audit.models import FindingLabel, Prediction
from common.errors import Refused

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

VALUES = {value for value, _ in FindingLabel.VALUE_CHOICES}


class LabelRefused(Refused):
    """A mark that cannot be stored; the message says why (a 400)."""


def prediction_findings(prediction: Prediction) -> list[str]:
    return [finding["name"] for finding in (prediction.results_json or {}).get("findings", [])]


def finding_labels_add(
    *, prediction: Prediction, marks: dict[str, str], user: AbstractBaseUser
) -> list[FindingLabel]:
    """Appends one mark per finding (`marks`: finding name -> present / absent / unsure), all or
    none. Findings must be the prediction's own. Raises LabelRefused, writing nothing."""
    if not marks:
        raise LabelRefused("Give at least one finding with present, absent or unsure.")
    known = set(prediction_findings(prediction))
    unknown = sorted(set(marks) - known)
    if unknown:
        raise LabelRefused(f"Prediction {prediction.pk} has no finding named {', '.join(unknown)}.")
    bad = sorted(name for name, value in marks.items() if value not in VALUES)
    if bad:
        raise LabelRefused(f"Marks must be present, absent or unsure; not so for: {', '.join(bad)}.")
    with transaction.atomic():
        return [
            FindingLabel.objects.create(prediction=prediction, finding=name, value=value, user=user)
            for name, value in marks.items()
        ]
