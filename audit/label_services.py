"""Writes of clinician feedback: marks are appended, never changed."""

from __future__ import annotations

from typing import TYPE_CHECKING

from django.db import transaction

from audit.models import FindingLabel, Prediction
from common.errors import Refused
from common.finding_names import finding_match

if TYPE_CHECKING:
    from django.contrib.auth.models import AbstractBaseUser

VALUES = {value for value, _ in FindingLabel.VALUE_CHOICES}


class LabelRefused(Refused):
    """A mark that cannot be stored; the message says why (a 400)."""


def prediction_findings(prediction: Prediction) -> list[str]:
    return [finding["name"] for finding in (prediction.results_json or {}).get("findings", [])]


def finding_labels_add(
    *,
    prediction: Prediction,
    marks: dict[str, str],
    user: AbstractBaseUser,
    after_model_output: bool = True,
) -> list[FindingLabel]:
    """Appends one mark per finding (`marks`: finding name -> present / absent / unsure), all or
    none. Findings must be the prediction's own, named as the prediction names them or by a name
    the label tables accept for them (common.finding_names: "Pleural Effusion" is "Effusion");
    the mark is stored under the prediction's name. `after_model_output` says whether the reader
    had seen the model's output when marking. Raises LabelRefused, writing nothing."""
    if not marks:
        raise LabelRefused("Give at least one finding with present, absent or unsure.")
    findings = prediction_findings(prediction)
    matched: dict[str, str] = {}
    unknown = []
    for given, value in marks.items():
        name = finding_match(given, findings)
        if name is None:
            unknown.append(given)
        elif name in matched and matched[name] != value:
            raise LabelRefused(f"{given!r} and another name given both mean {name}, with different marks.")
        else:
            matched[name] = value
    if unknown:
        raise LabelRefused(f"Prediction {prediction.pk} has no finding named {', '.join(sorted(unknown))}.")
    bad = sorted(name for name, value in marks.items() if value not in VALUES)
    if bad:
        raise LabelRefused(f"Marks must be present, absent or unsure; not so for: {', '.join(bad)}.")
    with transaction.atomic():
        return [
            FindingLabel.objects.create(
                prediction=prediction,
                finding=name,
                value=value,
                user=user,
                after_model_output=after_model_output,
            )
            for name, value in matched.items()
        ]
