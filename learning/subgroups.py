"""AUROC per subgroup (sex, age band, view, as the label table gives them) with intervals, and gaps
between subgroups larger than their intervals explain. No Django here.

A gap between two groups of one attribute is the difference of their mean AUROC over the findings
evaluable in both; it is flagged when the 95 % bootstrap interval of that difference (the same
patient-level rounds as the rest of the evaluation) excludes 0. With the small sets a site usually
has, most subgroups have too few positives for any finding and are reported as not evaluable.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np

from learning.intervals import auroc_intervals, percentile_interval, weighted_auroc

MIN_GROUP_IMAGES = 10


def _finding_rounds(labels, scores, weights, k) -> np.ndarray:
    known = ~np.isnan(labels[:, k])
    return weighted_auroc(labels[known, k], scores[known, k], weights[:, known])


def subgroup_report(
    labels: np.ndarray,
    scores: np.ndarray,
    class_names: list[str],
    attributes: dict[str, list],
    *,
    weights: np.ndarray,
    min_positives: int,
) -> dict:
    """{attribute: {"groups": {value: {"n", "mean_auroc", "ci", "findings", "per_class"}}, "gaps":
    [{"groups", "difference", "ci", "findings", "flagged"}]}} for every attribute with at least two
    groups of MIN_GROUP_IMAGES images or more."""
    report = {}
    for attribute, values in attributes.items():
        values = np.asarray([v if v else "" for v in values], dtype=object)
        groups = sorted(g for g in set(values.tolist()) if g and int((values == g).sum()) >= MIN_GROUP_IMAGES)
        if len(groups) < 2:
            continue
        entries, evaluable = {}, {}
        for group in groups:
            mask = values == group
            per_class, mean = auroc_intervals(
                labels[mask], scores[mask], class_names, weights=weights[:, mask], min_positives=min_positives
            )
            evaluable[group] = [k for k, name in enumerate(class_names) if per_class[name]["evaluable"]]
            entries[group] = {
                "n": int(mask.sum()),
                "mean_auroc": mean["auroc"],
                "ci": mean["ci"],
                "findings": mean["findings"],
                "per_class": {
                    name: {key: e[key] for key in ("auroc", "ci", "positives", "negatives")}
                    for name, e in per_class.items()
                },
            }
        gaps = []
        for a, b in combinations(groups, 2):
            common = sorted(set(evaluable[a]) & set(evaluable[b]))
            if not common:
                continue
            mask_a, mask_b = values == a, values == b
            rounds_a = np.vstack(
                [_finding_rounds(labels[mask_a], scores[mask_a], weights[:, mask_a], k) for k in common]
            )
            rounds_b = np.vstack(
                [_finding_rounds(labels[mask_b], scores[mask_b], weights[:, mask_b], k) for k in common]
            )
            with np.errstate(invalid="ignore"):
                difference_rounds = np.nanmean(rounds_a, axis=0) - np.nanmean(rounds_b, axis=0)
            point = float(
                np.mean([entries[a]["per_class"][class_names[k]]["auroc"] for k in common])
                - np.mean([entries[b]["per_class"][class_names[k]]["auroc"] for k in common])
            )
            ci = percentile_interval(difference_rounds)
            gaps.append(
                {
                    "groups": [a, b],
                    "difference": round(point, 4),
                    "ci": ci,
                    "findings": [class_names[k] for k in common],
                    "flagged": bool(ci is not None and (ci[0] > 0 or ci[1] < 0)),
                }
            )
        report[attribute] = {"groups": entries, "gaps": gaps}
    return report
