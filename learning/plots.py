"""Pictures of the numbers, as PNG bytes: ROC curves and reliability diagrams of an evaluation
(from its stored outputs), and a version's drift over the weeks (learning.drift). Drawn with
matplotlib's object API on the Agg canvas: no display, no pyplot state shared between threads."""

from __future__ import annotations

import io

import numpy as np


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _png(figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", bbox_inches="tight")
    return buffer.getvalue()


def _outputs(evaluation) -> tuple[list[str], np.ndarray, np.ndarray]:
    outputs = evaluation.outputs or {}
    names = list(outputs.get("class_names") or [])
    labels = np.array(
        [[np.nan if v is None else v for v in row] for row in outputs.get("labels") or []], dtype=float
    )
    scores = np.array(
        [[np.nan if v is None else v for v in row] for row in outputs.get("scores") or []], dtype=float
    )
    return names, labels.reshape(-1, len(names)), scores.reshape(-1, len(names))


def _interval(ci) -> str:
    return f" ({ci[0]:.2f}-{ci[1]:.2f})" if ci else ""


def roc_png(evaluation) -> bytes:
    """The ROC picture of `evaluation` (roc_figure) as a PNG."""
    return _png(roc_figure(evaluation))


def roc_figure(evaluation):
    """ROC curve of every evaluable finding, with its AUROC and 95 % interval in the legend; the
    chance diagonal dashed; findings with too few cases listed as not evaluable; both axes
    numbered and named."""
    from sklearn.metrics import roc_curve

    names, labels, scores = _outputs(evaluation)
    figure = _figure(8.5, 6.0)
    axes = figure.add_subplot(1, 1, 1)
    axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="chance (AUROC 0.5)")
    skipped = []
    for k, name in enumerate(names):
        entry = (evaluation.per_class or {}).get(name) or {}
        known = ~np.isnan(labels[:, k]) if len(labels) else np.array([], dtype=bool)
        y, s = labels[known, k], scores[known, k]
        if entry.get("auroc") is None or not ((y == 1).any() and (y == 0).any()):
            skipped.append(name)
            continue
        fpr, tpr, _ = roc_curve(y, s)
        axes.plot(fpr, tpr, linewidth=1.5, label=f"{name} {entry['auroc']:.2f}{_interval(entry.get('ci'))}")
    axes.set_xlim(0, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("False positive rate (1 - specificity)")
    axes.set_ylabel("True positive rate (sensitivity)")
    mean = evaluation.mean_auroc
    title = f"ROC, {evaluation.evaluation_set}"[:90]
    if mean is not None:
        title += f"\nmean AUROC {mean:.3f}{_interval(evaluation.mean_auroc_ci)}, 95 % bootstrap CI"
    axes.set_title(title, fontsize=9)
    axes.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, title="AUROC (95 % CI)")
    if skipped:
        axes.text(
            0.99, 0.02, "not evaluable: " + ", ".join(skipped), transform=axes.transAxes,
            ha="right", va="bottom", fontsize=7, wrap=True,
        )  # fmt: skip
    axes.grid(alpha=0.3)
    figure.canvas.draw()  # lays the ticks out, so their labels can be read
    return figure


def reliability_png(evaluation) -> bytes:
    """Reliability diagram per finding: observed share of positives against the mean score in ten
    equal-width bins (marker area by count), the diagonal of perfect calibration, ECE and Brier."""
    calibration = (evaluation.details or {}).get("calibration") or {}
    names = [name for name in calibration if (calibration[name] or {}).get("n")]
    columns = 4
    rows = max(1, -(-len(names) // columns))
    figure = _figure(3.0 * columns, 2.8 * rows)
    for i, name in enumerate(names):
        entry = calibration[name]
        axes = figure.add_subplot(rows, columns, i + 1)
        axes.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
        bins = [b for b in entry["bins"] if b["n"]]
        axes.scatter(
            [b["mean_score"] for b in bins],
            [b["observed"] for b in bins],
            s=[10 + 4 * b["n"] for b in bins],
            alpha=0.7,
        )
        axes.plot([b["mean_score"] for b in bins], [b["observed"] for b in bins], linewidth=1)
        axes.set_xlim(0, 1)
        axes.set_ylim(0, 1)
        axes.set_title(f"{name}\nECE {entry['ece']:.3f}, Brier {entry['brier']:.3f}", fontsize=8)
        axes.set_xlabel("mean score in bin", fontsize=7)
        axes.set_ylabel("observed share positive", fontsize=7)
        axes.tick_params(labelsize=7)
    figure.suptitle(f"Reliability, {evaluation.evaluation_set}"[:100], fontsize=9)
    figure.tight_layout()
    return _png(figure)


def drift_png(version_report: dict) -> bytes:
    """Three panels over the weeks of one version (learning.drift): predictions per week; the
    largest per-finding PSI with the alert line; the share of inputs outside what the version was
    evaluated on and the mean share of positive calls, each beside the evaluation set's."""
    weeks = version_report.get("weeks") or []
    labels = [entry["week"][5:] for entry in weeks]
    x = np.arange(len(weeks))
    figure = _figure(8.0, 7.0)
    volume, shift, shares = (figure.add_subplot(3, 1, i) for i in (1, 2, 3))
    volume.bar(x, [entry["n"] for entry in weeks], color="#4c72b0")
    volume.set_ylabel("predictions")
    volume.set_title(f"Drift of {version_report['version_name']} by week (Monday, UTC)", fontsize=9)
    psi_max = [np.nan if entry["psi_max"] is None else entry["psi_max"] for entry in weeks]
    shift.plot(x, psi_max, marker="o", label="largest PSI over findings")
    alert = version_report.get("psi_alert")
    if alert is not None:
        shift.axhline(alert, color="#c44e52", linestyle="--", linewidth=1, label=f"alert ({alert})")
    shift.set_ylabel("PSI vs evaluation set")
    shift.legend(fontsize=7)
    ood = [np.nan if entry["ood_share"] is None else entry["ood_share"] for entry in weeks]
    positive = [
        np.nanmean(
            [f["positive_share"] for f in entry["findings"].values() if f["positive_share"] is not None]
        )
        if any(f["positive_share"] is not None for f in entry["findings"].values())
        else np.nan
        for entry in weeks
    ]
    shares.plot(x, ood, marker="o", label="outside what was evaluated")
    shares.plot(x, positive, marker="s", label="positive calls (mean over findings)")
    reference = version_report.get("reference") or {}
    if reference.get("ood_expected_share") is not None:
        shares.axhline(
            reference["ood_expected_share"],
            linestyle=":",
            color="grey",
            linewidth=1,
            label="expected outside",
        )
    ref_positive = [
        f["positive_share"]
        for f in (reference.get("findings") or {}).values()
        if f.get("positive_share") is not None
    ]
    if ref_positive:
        shares.axhline(
            float(np.mean(ref_positive)),
            linestyle="--",
            color="grey",
            linewidth=1,
            label="positive calls, evaluation set",
        )
    shares.set_ylim(0, 1)
    shares.set_ylabel("share of predictions")
    shares.set_xlabel("week starting")
    shares.legend(fontsize=7)
    for axes in (volume, shift, shares):
        axes.set_xticks(x, labels, fontsize=7)
        axes.grid(alpha=0.3)
    figure.tight_layout()
    return _png(figure)
