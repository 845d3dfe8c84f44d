"""INT8 against FP32 on the same weights (registry.quantization, as `register_model --precision
int8` makes it): the forward's speed side by side, and on the 250 real NIH images of
../shared/data their probabilities, AUROC per finding against NIH's labels, and heatmaps."""

from __future__ import annotations

import csv
import time

import numpy as np

from bench.install import SHARED_DATA
from bench.timing import median, ratio

NIH_IMAGES = SHARED_DATA / "nih_reproduce_chexnet" / "images"

# docs/performance.md "INT8 serving precision": the goal for an INT8 serving graph against the FP32 one.
GOALS = {"speedup": 1.8, "max_abs_probability_diff": 0.02, "auroc_diff": 0.005, "heatmap_correlation": 0.98}


def _nih_rows(folder) -> list[dict]:
    with open(folder / "nih_labels.csv", newline="") as handle:
        return [row for row in csv.DictReader(handle) if row["path"].startswith("nih_reproduce_chexnet/")]


def int8_phase(*, version, threads: int, reps: int, log) -> dict:
    from sklearn.metrics import roc_auc_score

    from engine.decode import decode_gray
    from engine.heatmaps import cams_normalised
    from engine.pipeline import preprocess
    from engine.serving import ServingRuntime
    from registry import quantization
    from registry.models import DEFAULT_PREPROCESSING
    from registry.storage import serving_graph_read

    spec = version.preprocessing or DEFAULT_PREPROCESSING
    size = int(spec.get("input_size", 224))
    fp32_graph = serving_graph_read(version)
    started = time.perf_counter()
    int8_graph, card = quantization.int8_graph(
        fp32_graph, preprocessing=spec, images=quantization.calibration_images(NIH_IMAGES)
    )
    quantize_s = time.perf_counter() - started
    fp32 = ServingRuntime.from_graph(fp32_graph, size, threads=threads)
    int8 = ServingRuntime.from_graph(int8_graph, size, threads=threads)
    log("INT8 graph quantized in %.1f s; comparing on the NIH images", quantize_s)

    folder = SHARED_DATA
    rows = _nih_rows(folder)
    tensors = [preprocess(decode_gray((folder / row["path"]).read_bytes()), spec) for row in rows]

    # Speed: interleaved, order alternating, at the serving threads.
    for t in tensors[:3]:
        fp32.run(t), int8.run(t)
    fp32_ms, int8_ms = [], []
    for r in range(reps):
        for i, t in enumerate(tensors[:16]):
            pair = [(fp32, fp32_ms), (int8, int8_ms)]
            for model, sink in pair if (i + r) % 2 == 0 else pair[::-1]:
                begun = time.perf_counter()
                model.run(t)
                sink.append((time.perf_counter() - begun) * 1000)

    # Quality on all NIH images: probabilities, AUROC per finding, heatmaps.
    p_fp32, p_int8, correlations = [], [], []
    for t in tensors:
        (la, ca), (lb, cb) = fp32.run(t), int8.run(t)
        p_fp32.append(1 / (1 + np.exp(-la.astype(np.float64))))
        p_int8.append(1 / (1 + np.exp(-lb.astype(np.float64))))
        for a, b in zip(cams_normalised(ca, size), cams_normalised(cb, size), strict=True):
            if a.std() > 0 and b.std() > 0:
                correlations.append(float(np.corrcoef(a.ravel(), b.ravel())[0, 1]))
    p_fp32, p_int8 = np.array(p_fp32), np.array(p_int8)
    auroc = {}
    for k, name in enumerate(version.class_names):
        if name not in rows[0]:
            continue
        labels = np.array([int(row[name]) for row in rows])
        if 0 < labels.sum() < len(labels):
            a, b = roc_auc_score(labels, p_fp32[:, k]), roc_auc_score(labels, p_int8[:, k])
            auroc[name] = {"fp32": round(a, 4), "int8": round(b, 4), "diff": round(abs(a - b), 4)}
    speed = ratio(
        median(fp32_ms),
        median(int8_ms),
        a="FP32 serving graph forward (logits + maps), ms, p50",
        b="INT8 serving graph of the same weights, same threads, interleaved",
    )
    out = {
        "speedup_int8_over_fp32": speed,
        "images": len(tensors),
        "max_abs_probability_diff": round(float(np.max(np.abs(p_fp32 - p_int8))), 5),
        "auroc_per_finding": auroc,
        "auroc_diff_max": max((v["diff"] for v in auroc.values()), default=None),
        "heatmap_correlation_p05": round(float(np.percentile(correlations, 5)), 4) if correlations else None,
        "heatmap_correlation_median": round(float(np.median(correlations)), 4) if correlations else None,
        "quantize_s": round(quantize_s, 1),
        "registration_card": card,
    }
    out["goals"] = {
        "speedup_at_least_1.8": (speed["ratio"] or 0) >= GOALS["speedup"],
        "probabilities_within_0.02": out["max_abs_probability_diff"] <= GOALS["max_abs_probability_diff"],
        "auroc_within_0.005": out["auroc_diff_max"] is not None
        and out["auroc_diff_max"] <= GOALS["auroc_diff"],
        "heatmap_correlation_p05_at_least_0.98": (out["heatmap_correlation_p05"] or 0)
        >= GOALS["heatmap_correlation"],
    }
    log(
        "INT8: %.2fx faster, max prob diff %.4f, AUROC diff max %s, heatmap corr p05 %s",
        speed["ratio"] or 0,
        out["max_abs_probability_diff"],
        out["auroc_diff_max"],
        out["heatmap_correlation_p05"],
    )
    return out
