"""Drift: whether what a version sees in use still looks like what its evaluation measured.

Per version and per ISO week (Monday, UTC) over the last `weeks` weeks of the prediction log: the
volume; per finding, the distribution of served scores in the deciles of the evaluation set's
scores (each decile holds a tenth of the evaluation images by construction) and its
population-stability index against them; the share of positive calls next to the evaluation set's
share at the same thresholds; the share of inputs marked outside what the version was evaluated on;
and the input mix (container and modality, manufacturer, size, bit depth) recorded at analysis
time. A week alerts when some finding's PSI passes LUNGSITE_DRIFT_PSI_ALERT with at least
LUNGSITE_DRIFT_MIN_WEEKLY predictions (PSI of a few dozen scores is mostly noise).

The reference is the version's evaluation in force now, its raw scores passed through the
version's calibration now; a week of predictions served under an earlier calibration compares
against the current one.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from datetime import UTC, datetime, timedelta

import numpy as np
from django.conf import settings
from django.utils import timezone

from audit.models import Prediction
from learning.calibration import calibration_apply
from registry.models import ModelVersion

DECILES = np.linspace(0.1, 0.9, 9)
_EPS = 1e-4


def psi(expected: np.ndarray, observed: np.ndarray) -> float:
    """Population-stability index of proportions `observed` against `expected` (same bins):
    sum((o - e) * ln(o / e)), each proportion floored at 1e-4 so that an empty bin counts as
    rare rather than infinite. 0.1-0.25 is usually read as a moderate shift, above 0.25 a large one."""
    e = np.maximum(np.asarray(expected, dtype=np.float64), _EPS)
    o = np.maximum(np.asarray(observed, dtype=np.float64), _EPS)
    return float(np.sum((o - e) * np.log(o / e)))


def _week(moment: datetime) -> str:
    day = moment.astimezone(UTC).date()
    return (day - timedelta(days=day.weekday())).isoformat()


def _size_bucket(rows: int, cols: int) -> str:
    side = max(rows, cols)
    return "< 1024 px" if side < 1024 else "1024-2047 px" if side < 2048 else ">= 2048 px"


def _reference(version: ModelVersion) -> dict | None:
    """The evaluation in force's served scores, their decile edges and positive shares."""
    evaluation = version.evaluation_in_force()
    if evaluation is None:
        return None
    outputs = evaluation.__class__.objects.filter(pk=evaluation.pk).values_list("outputs", flat=True).first()
    names = list(outputs.get("class_names") or [])
    if names != list(version.class_names):
        return None
    raw = outputs.get("raw_scores") or outputs.get("scores") or []
    scores = np.array([[np.nan if v is None else v for v in row] for row in raw], dtype=np.float64)
    if outputs.get("raw_scores"):
        scores = calibration_apply(version.calibration, names, scores)[0]
    labels = np.array([[np.nan if v is None else v for v in row] for row in outputs.get("labels") or []])
    findings = {}
    for k, name in enumerate(names):
        column = scores[:, k] if len(scores) else np.array([])
        column = column[np.isfinite(column)]
        known = labels[:, k][~np.isnan(labels[:, k])] if len(labels) else np.array([])
        findings[name] = {
            "edges": [round(float(e), 6) for e in np.unique(np.quantile(column, DECILES))]
            if len(column)
            else [],
            "positive_share": round(float((column >= version.threshold_for(name)).mean()), 4)
            if len(column)
            else None,
            "prevalence": round(float(known.mean()), 4) if len(known) else None,
            "scores": column,
        }
    return {
        "evaluation": {
            "id": evaluation.pk,
            "evaluation_set": evaluation.evaluation_set,
            "n_images": evaluation.n_images,
            "created_at": evaluation.created_at.isoformat(),
        },
        "ood_expected_share": round(1.0 - float(settings.LUNGSITE_OOD_QUANTILE), 4)
        if evaluation.ood_threshold is not None
        else None,
        "findings": findings,
    }


def _proportions(values: np.ndarray, edges: list[float]) -> list[float]:
    counts = np.bincount(np.searchsorted(np.asarray(edges), values, side="right"), minlength=len(edges) + 1)
    return (counts / max(len(values), 1)).tolist()


def drift_report(*, weeks: int = 12, version_id: int | None = None, now: datetime | None = None) -> dict:
    """The drift figures as JSON-ready dicts: {"generated_at", "weeks", "psi_alert", "min_weekly",
    "versions": [{"id", "version_name", "is_active", "reference", "weeks": [...]}]}, newest week
    last. `version_id` restricts it to one version."""
    now = now or timezone.now()
    start_day = _week(now - timedelta(weeks=max(1, weeks) - 1))
    start = datetime.fromisoformat(start_day).replace(tzinfo=UTC)
    alert = float(settings.LUNGSITE_DRIFT_PSI_ALERT)
    min_weekly = int(settings.LUNGSITE_DRIFT_MIN_WEEKLY)
    rows = Prediction.objects.filter(created_at__gte=start).order_by()
    if version_id is not None:
        rows = rows.filter(model_id=version_id)

    groups: dict[tuple[int, str], dict] = defaultdict(
        lambda: {
            "n": 0,
            "scores": defaultdict(list),
            "positives": Counter(),
            "ood_measured": 0,
            "ood_outside": 0,
            "format": Counter(),
            "manufacturer": Counter(),
            "size": Counter(),
            "bits": Counter(),
        }
    )
    for created_at, model_id, results in rows.values_list("created_at", "model_id", "results_json").iterator(
        chunk_size=2000
    ):
        results = results or {}
        group = groups[(model_id, _week(created_at))]
        group["n"] += 1
        for finding in results.get("findings") or []:
            score = finding.get("probability")
            if isinstance(score, int | float) and math.isfinite(score):
                group["scores"][finding.get("name")].append(float(score))
                group["positives"][finding.get("name")] += bool(finding.get("positive"))
        ood = results.get("ood")
        if ood:
            group["ood_measured"] += 1
            group["ood_outside"] += bool(ood.get("outside"))
        facts = results.get("input")
        if facts:
            kind = facts.get("format", "other")
            if facts.get("modality"):
                kind = f"{kind} {facts['modality']}"
            group["format"][kind] += 1
            group["manufacturer"][facts.get("manufacturer") or "(not recorded)"] += 1
            group["size"][_size_bucket(int(facts.get("rows", 0)), int(facts.get("cols", 0)))] += 1
            group["bits"][f"{facts.get('bits')}-bit"] += 1
        else:
            group["format"]["(not recorded)"] += 1

    versions = ModelVersion.objects.filter(pk__in={key[0] for key in groups}).order_by("-created_at")
    report = []
    for version in versions:
        reference = _reference(version)
        entries = []
        for (model_id, week), group in sorted(groups.items(), key=lambda item: item[0][1]):
            if model_id != version.pk:
                continue
            entries.append(_week_entry(version, week, group, reference, alert, min_weekly))
        report.append(
            {
                "id": version.pk,
                "version_name": version.version_name,
                "is_active": version.is_active,
                "reference": None
                if reference is None
                else {
                    "evaluation": reference["evaluation"],
                    "ood_expected_share": reference["ood_expected_share"],
                    "findings": {
                        name: {key: value for key, value in entry.items() if key != "scores"}
                        for name, entry in reference["findings"].items()
                    },
                },
                "weeks": entries,
            }
        )
    return {
        "generated_at": now.isoformat(),
        "since": start_day,
        "weeks": weeks,
        "psi_alert": alert,
        "min_weekly": min_weekly,
        "versions": report,
    }


def _week_entry(
    version, week: str, group: dict, reference: dict | None, alert: float, min_weekly: int
) -> dict:
    findings = {}
    psis = []
    for name in version.class_names:
        scores = np.asarray(group["scores"].get(name, []), dtype=np.float64)
        entry = {
            "positive_share": round(group["positives"][name] / len(scores), 4) if len(scores) else None,
            "quantiles": [round(float(q), 4) for q in np.quantile(scores, [0.1, 0.5, 0.9])]
            if len(scores)
            else None,
            "psi": None,
            "histogram": None,
        }
        ref = (reference or {}).get("findings", {}).get(name)
        if ref is not None and len(ref["scores"]) and len(scores):
            expected = _proportions(ref["scores"], ref["edges"])
            observed = _proportions(scores, ref["edges"])
            entry["psi"] = round(psi(expected, observed), 4)
            entry["histogram"] = {
                "week": [round(v, 4) for v in observed],
                "reference": [round(v, 4) for v in expected],
            }
            entry["reference_positive_share"] = ref["positive_share"]
            psis.append(entry["psi"])
        findings[name] = entry
    psi_max = max(psis) if psis else None
    return {
        "week": week,
        "n": group["n"],
        "psi_max": psi_max,
        "alert": bool(psi_max is not None and psi_max > alert and group["n"] >= min_weekly),
        "low_volume": group["n"] < min_weekly,
        "ood_share": round(group["ood_outside"] / group["ood_measured"], 4)
        if group["ood_measured"]
        else None,
        "ood_measured": group["ood_measured"],
        "findings": findings,
        "input_mix": {
            key: dict(group[key].most_common()) for key in ("format", "manufacturer", "size", "bits")
        },
    }
