"""Fine-tuning a network on a label table (`manage.py train_model`, the admin's training task).

- Split: by patient (NIH `Patient ID`, the NIH file-name prefix, CheXpert's patient folder, or the
  image for feedback labels) into training, validation and test: no patient is on two sides. The
  validation side chooses the epoch, the thresholds and the calibration; the test side, which
  chose nothing, gives the figures the version is judged by (a held-out evaluation, through the
  registered version's serving graph).
- Augmentation: small random affine (rotation up to 7 degrees, shift up to 5 %, scale 0.9-1.1) and
  brightness/contrast jitter. No horizontal flip: left and right are anatomy on a chest X-ray (the
  heart's side; dextrocardia is itself a finding), so a flipped image is not a plausible one.
- Loss: BCE with logits, per class `pos_weight` = negatives / positives on the training side, and
  unlabelled (NaN) entries left out.
- Early stopping on the validation mean AUROC (patience epochs without a gain), the best epoch's
  weights kept and checkpointed; `max_minutes` bounds the wall time.
- Calibration (default Platt: a temperature and a bias per finding) fitted on the validation side,
  since class-balanced loss pushes every score towards 0.5 whatever the prevalence.
- Thresholds chosen on the validation side, on the calibrated scale, with their bootstrap
  interval: Youden's J, or the highest threshold that reaches a target sensitivity.
No Django here except `training_register`, which stores the result through the registry services.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from learning.calibration import calibration_apply, calibration_fit
from learning.evaluation import mean_auroc, per_class_auroc
from learning.intervals import threshold_at_sensitivity, threshold_choice
from learning.labels import LabelTable

logger = logging.getLogger(__name__)


class TrainingError(Exception):
    """Training cannot run on this input; the message says why."""


@dataclass
class TrainConfig:
    epochs: int = 10
    batch_size: int = 16
    lr: float = 1e-4
    max_minutes: float | None = None
    input_size: int = 224
    val_fraction: float = 0.2
    test_fraction: float = 0.2
    patience: int = 3
    seed: int = 0
    target_sensitivity: float | None = None
    calibration: str | None = "platt"  # or "temperature"; None: serve uncalibrated scores
    min_positives: int = 10
    bootstrap_rounds: int = 1000
    checkpoint_dir: Path | None = None
    device: str | None = None  # None: CUDA when torch finds it, else the CPU


@dataclass
class TrainResult:
    weights: bytes
    class_names: list[str]
    preprocessing: dict
    per_class: dict[str, dict]
    mean_auroc: float | None
    thresholds: dict[str, float]
    history: list[dict]
    split: dict
    val_table: LabelTable
    val_scores: np.ndarray  # served scale: calibrated where a calibration was fitted
    val_raw_scores: np.ndarray
    test_table: LabelTable | None
    calibration: dict
    threshold_choices: dict[str, dict]
    train_pixel_ids: list[str]
    val_pixel_ids: list[str]
    best_epoch: int
    epochs_run: int
    seconds: float
    device: str
    stopped_because: str
    config: dict = field(default_factory=dict)


def patient_split(
    table: LabelTable, *, val_fraction: float, seed: int, test_fraction: float = 0.0
) -> tuple[list[int], list[int], list[int]]:
    """Indexes (train, validation, test), grouped by patient so that no patient is on two sides.
    Of a few shuffles, keeps the one whose validation and test sides have both positives and
    negatives for the most classes (AUROC is undefined without both). `test_fraction` 0 gives an
    empty test side."""
    patients = sorted(set(table.patients))
    sides = 3 if test_fraction > 0 else 2
    if len(patients) < sides:
        raise TrainingError(
            f"A patient-level split into {sides} sides needs images of at least {sides} patients."
        )
    rows_of: dict[str, list[int]] = {}
    for i, patient in enumerate(table.patients):
        rows_of.setdefault(patient, []).append(i)
    n = len(table.patients)
    val_target = max(1, round(n * val_fraction))
    test_target = max(1, round(n * test_fraction)) if test_fraction > 0 else 0

    def both(indexes) -> int:
        labels = table.labels[indexes]
        return int(
            sum(((labels[:, k] == 1).any() and (labels[:, k] == 0).any()) for k in range(labels.shape[1]))
        )

    best, best_score = None, -1
    for attempt in range(20):
        order = list(np.random.default_rng(seed + attempt).permutation(len(patients)))
        test: list[int] = []
        while order and len(test) < test_target:
            test.extend(rows_of[patients[order.pop(0)]])
        val: list[int] = []
        while order and len(val) < val_target:
            val.extend(rows_of[patients[order.pop(0)]])
        if not order or not val or (test_fraction > 0 and not test):  # keep a training side
            continue
        score = both(val) + (both(test) if test else 0)
        if score > best_score:
            best, best_score = (sorted(val), sorted(test)), score
    if best is None:
        raise TrainingError(
            "Cannot split these images into patient groups for training, validation and test."
        )
    val, test = best
    held = set(val) | set(test)
    return [i for i in range(n) if i not in held], val, test


def sensitivity_thresholds(
    labels: np.ndarray, scores: np.ndarray, class_names, *, target: float
) -> dict[str, float]:
    """Per class, the highest threshold whose sensitivity on this set is at least `target`."""
    result = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(labels[:, k])
        threshold = threshold_at_sensitivity(labels[known, k], scores[known, k], target)
        if threshold is not None:
            result[name] = threshold
    return result


def build_network(architecture: str, num_classes: int):
    """A fresh network of `architecture` (random init: no pretrained download)."""
    try:
        from engine.architectures import build_model  # the architecture table, where present
    except ImportError:
        from engine.weights import build_model
    return build_model(architecture, num_classes)


def _load_inputs(
    table: LabelTable, spec: dict, decode_max_pixels: int
) -> tuple[np.ndarray, list[int], list, list[str]]:
    """Decodes and resizes every image once: (N, 1, S, S) float32 in [0, 1], the indexes kept, the
    skipped images and the kept images' pixel ids (learning.scoring.pixel_sha256). Normalisation
    and augmentation happen per batch."""
    from engine.decode import decode_gray
    from engine.pipeline import preprocess
    from learning.scoring import pixel_sha256

    plain = {**spec, "channels": 1, "mean": [0.0], "std": [1.0]}
    arrays, kept, skipped, ids = [], [], [], []
    for i, path in enumerate(table.paths):
        try:
            image = decode_gray(path.read_bytes(), path.name, max_pixels=decode_max_pixels)
            arrays.append(preprocess(image, plain)[0])
        except Exception as exc:  # noqa: BLE001 - one unreadable image must not stop the training
            skipped.append({"path": str(path), "reason": str(exc) or type(exc).__name__})
            continue
        kept.append(i)
        ids.append(pixel_sha256(image))
    if not arrays:
        raise TrainingError(f"None of the {len(table.paths)} images could be read.")
    return np.stack(arrays).astype(np.float32), kept, skipped, ids


def _progress_bar(total: int, desc: str, stream):
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, file=stream, leave=False, dynamic_ncols=True)


def train(
    table: LabelTable,
    *,
    model,
    architecture: str,
    config: TrainConfig,
    preprocessing: dict,
    on_progress: Callable[[dict], None] | None = None,
    stream=None,
    max_pixels: int = 60_000_000,
) -> TrainResult:
    """Fine-tunes `model` (an nn.Module with len(table.class_names) outputs) on `table`; returns the
    best epoch's weights with their validation results."""
    import torch
    from torch import nn
    from torchvision.transforms import v2

    stream = stream if stream is not None else sys.stderr
    started = time.monotonic()
    deadline = started + config.max_minutes * 60 if config.max_minutes else None
    torch.manual_seed(config.seed)
    device = torch.device(config.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    spec = {**preprocessing, "input_size": config.input_size}
    class_names = table.class_names

    inputs, kept, skipped, pixel_ids = _load_inputs(table, spec, max_pixels)
    table = table.subset(kept)
    train_idx, val_idx, test_idx = patient_split(
        table, val_fraction=config.val_fraction, test_fraction=config.test_fraction, seed=config.seed
    )
    labels = table.labels
    x_train, y_train = torch.from_numpy(inputs[train_idx]), torch.from_numpy(labels[train_idx]).float()
    x_val, y_val_np = torch.from_numpy(inputs[val_idx]), labels[val_idx]

    positives = np.nansum(labels[train_idx] == 1, axis=0)
    negatives = np.nansum(labels[train_idx] == 0, axis=0)
    pos_weight = torch.tensor(np.where(positives > 0, negatives / np.maximum(positives, 1), 1.0)).float()
    mean = torch.tensor(spec.get("mean", [0.485, 0.456, 0.406])).float().view(1, -1, 1, 1)
    std = torch.tensor(spec.get("std", [0.229, 0.224, 0.225])).float().view(1, -1, 1, 1)
    augment = v2.Compose(
        [
            v2.RandomAffine(degrees=7, translate=(0.05, 0.05), scale=(0.9, 1.1)),
            v2.ColorJitter(brightness=0.1, contrast=0.1),
        ]
    )

    def normalised(batch):  # (B, 1, S, S) in [0, 1] -> (B, 3, S, S) as the model's preprocessing
        return ((batch.expand(-1, 3, -1, -1) - mean) / std).to(device)

    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight.to(device), reduction="none")

    def validate() -> tuple[np.ndarray, dict, float | None]:
        model.eval()
        rows = []
        with torch.inference_mode():
            for start in range(0, len(x_val), config.batch_size):
                rows.append(torch.sigmoid(model(normalised(x_val[start : start + config.batch_size]))).cpu())
        scores = torch.cat(rows).numpy().astype(np.float64)
        per_class = per_class_auroc(y_val_np, scores, class_names)
        return scores, per_class, mean_auroc(per_class)

    history: list[dict] = []
    best_state, best_mean, best_epoch, best_scores = None, -1.0, 0, None
    stale, stopped_because, epoch = 0, "epochs done", 0
    steps = math.ceil(len(x_train) / config.batch_size)
    generator = torch.Generator().manual_seed(config.seed)
    for epoch in range(1, config.epochs + 1):
        model.train()
        order = torch.randperm(len(x_train), generator=generator)
        bar = _progress_bar(steps, f"epoch {epoch}/{config.epochs}", stream)
        total, seen, out_of_time = 0.0, 0, False
        for step in range(steps):
            index = order[step * config.batch_size : (step + 1) * config.batch_size]
            batch = torch.stack([augment(image) for image in x_train[index]])
            target = y_train[index].to(device)
            known = ~torch.isnan(target)
            logits = model(normalised(batch))
            loss = (loss_fn(logits, torch.nan_to_num(target)) * known).sum() / known.sum().clamp(min=1)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(index)
            seen += len(index)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{total / seen:.4f}")
            if on_progress is not None:
                on_progress({"epoch": epoch, "step": step + 1, "steps": steps, "loss": total / seen})
            if deadline is not None and time.monotonic() > deadline:
                out_of_time = True
                break
        if bar is not None:
            bar.close()
        scores, per_class, mean = validate()
        entry = {
            "epoch": epoch,
            "train_loss": round(total / max(seen, 1), 5),
            "val_mean_auroc": None if mean is None else round(mean, 4),
            "seconds": round(time.monotonic() - started, 1),
            "partial": out_of_time,
        }
        history.append(entry)
        print(
            f"epoch {epoch}: loss {entry['train_loss']:.4f}, val mean AUROC "
            f"{'-' if mean is None else f'{mean:.4f}'} ({entry['seconds']} s)",
            file=stream,
            flush=True,
        )
        if on_progress is not None:
            on_progress({"epoch": epoch, "steps": steps, "step": steps, **entry})
        if mean is not None and mean > best_mean or best_state is None:
            best_mean, best_epoch, best_scores = (mean if mean is not None else -1.0), epoch, scores
            best_state = copy.deepcopy({k: v.detach().cpu() for k, v in model.state_dict().items()})
            stale = 0
            if config.checkpoint_dir is not None:
                config.checkpoint_dir.mkdir(parents=True, exist_ok=True)
                torch.save(best_state, config.checkpoint_dir / "best.pt")
        else:
            stale += 1
        if config.checkpoint_dir is not None:
            torch.save(
                {"state_dict": model.state_dict(), "epoch": epoch, "optimizer": optimizer.state_dict()},
                config.checkpoint_dir / "last.pt",
            )
        if out_of_time:
            stopped_because = f"time limit ({config.max_minutes} min)"
            break
        if stale >= config.patience:
            stopped_because = f"early stop: no validation gain for {config.patience} epochs"
            break

    model.load_state_dict(best_state)
    val_table = table.subset(val_idx)
    calibration = (
        calibration_fit(
            y_val_np, best_scores, class_names, method=config.calibration, min_positives=config.min_positives
        )
        if config.calibration
        else {}
    )
    served_val, _ = calibration_apply(calibration, class_names, best_scores)
    per_class = per_class_auroc(y_val_np, served_val, class_names)
    choices = {}
    for k, name in enumerate(class_names):
        known = ~np.isnan(y_val_np[:, k])
        choice = threshold_choice(
            y_val_np[known, k],
            served_val[known, k],
            [val_table.patients[i] for i in np.flatnonzero(known)],
            target_sensitivity=config.target_sensitivity,
            rounds=config.bootstrap_rounds,
            seed=config.seed,
        )
        if choice is not None:
            choices[name] = choice
    thresholds = {name: choice["threshold"] for name, choice in choices.items()}
    buffer = io.BytesIO()
    torch.save(best_state, buffer)
    return TrainResult(
        weights=buffer.getvalue(),
        class_names=list(class_names),
        preprocessing=spec,
        per_class=per_class,
        mean_auroc=mean_auroc(per_class),
        thresholds=thresholds,
        history=history,
        split={
            "by": table.report.patient_source or "patient",
            "train_images": len(train_idx),
            "train_patients": len({table.patients[i] for i in train_idx}),
            "val_images": len(val_idx),
            "val_patients": len({table.patients[i] for i in val_idx}),
            "test_images": len(test_idx),
            "test_patients": len({table.patients[i] for i in test_idx}),
            "patients_on_both_sides": _shared_patients(table, train_idx, val_idx, test_idx),
            "skipped_images": skipped,
            "seed": config.seed,
        },
        val_table=val_table,
        val_scores=served_val,
        val_raw_scores=best_scores,
        test_table=table.subset(test_idx) if test_idx else None,
        calibration=calibration,
        threshold_choices=choices,
        train_pixel_ids=[pixel_ids[i] for i in train_idx],
        val_pixel_ids=[pixel_ids[i] for i in val_idx],
        best_epoch=best_epoch,
        epochs_run=epoch,
        seconds=round(time.monotonic() - started, 1),
        device=str(device),
        stopped_because=stopped_because,
        config={
            "epochs": config.epochs,
            "batch_size": config.batch_size,
            "lr": config.lr,
            "max_minutes": config.max_minutes,
            "input_size": config.input_size,
            "val_fraction": config.val_fraction,
            "test_fraction": config.test_fraction,
            "patience": config.patience,
            "target_sensitivity": config.target_sensitivity,
            "calibration": config.calibration,
            "architecture": architecture,
            "augmentation": "random affine (rotation 7 deg, shift 5 %, scale 0.9-1.1), "
            "brightness/contrast 0.1; no horizontal flip",
            "loss": "BCE with logits, pos_weight = negatives/positives per class on the training side",
        },
    )


def _shared_patients(table: LabelTable, *sides: list[int]) -> int:
    """How many patients have images on more than one side of the split (0 by construction)."""
    seen: dict[str, int] = {}
    for indexes in sides:
        for patient in {table.patients[i] for i in indexes}:
            seen[patient] = seen.get(patient, 0) + 1
    return sum(1 for count in seen.values() if count > 1)


def model_card(result: TrainResult, *, base: str, data_source: str, label_report: dict) -> dict:
    """What a reader needs to judge the version, as JSON (the admin renders it). `training_register`
    adds the test split's figures once the version is registered and scored through its graph."""
    split = result.split
    return {
        "intended_use": "Research and education only; not a medical device. Scores findings on frontal "
        "chest radiographs. Fine-tuned on a small labelled set: its figures below are measured on a "
        "held-out patient split of that set only.",
        "base": base,
        "training_data": data_source,
        "labels": label_report,
        "split": split,
        "training": {
            **result.config,
            "epochs_run": result.epochs_run,
            "best_epoch": result.best_epoch,
            "stopped_because": result.stopped_because,
            "seconds": result.seconds,
            "device": result.device,
            "history": result.history,
        },
        "preprocessing": result.preprocessing,
        "validation": {
            "set": f"validation split of {data_source} ({split['val_images']} images, "
            f"{split['val_patients']} patients): chose the epoch, thresholds and calibration",
            "auroc": result.per_class,
            "mean_auroc": result.mean_auroc,
        },
        "evaluation_set": f"test split of {data_source} ({split['test_images']} images, "
        f"{split['test_patients']} patients)"
        if split.get("test_images")
        else "none: no test split was kept (--test-fraction 0); evaluate the version on held-out images",
        "auroc": {},
        "mean_auroc": None,
        "mean_auroc_ci": None,
        "thresholds": result.thresholds,
        "threshold_intervals": {name: choice.get("ci") for name, choice in result.threshold_choices.items()},
        "thresholds_rule": "target sensitivity " + str(result.config.get("target_sensitivity"))
        if result.config.get("target_sensitivity") is not None
        else "Youden's J on the validation split",
        "calibration": {
            "method": result.calibration.get("method") if result.calibration else None,
            "calibrated_findings": sorted(
                name for name, entry in (result.calibration.get("per_class") or {}).items() if "a" in entry
            )
            if result.calibration
            else [],
        },
    }


def _auroc_text(entry: dict) -> str:
    if entry.get("auroc") is None:
        return "not evaluable" if entry.get("evaluable") is False else "-"
    ci = entry.get("ci")
    return f"{entry['auroc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")


def model_card_markdown(card: dict) -> str:
    """The card as Markdown: a trained version's (training, split, measured AUROC) or registered
    weights' (their source and preprocessing); either with the preprocessing and any AUROC
    published with the weights, which is never a measurement made here."""
    from engine.preprocessing import preprocessing_describe

    lines = ["# Model card", ""]
    if "training" in card:
        lines += _trained_card_lines(card)
    else:
        lines += [
            f"- Architecture: {card.get('architecture', '-')}",
            f"- Weights: {card.get('weights_source', '-')} (registered, not trained here)",
        ]
    if card.get("preprocessing"):
        lines += ["", f"**Preprocessing.** {preprocessing_describe(card['preprocessing'])}"]
    if card.get("serving_precision"):
        from registry.quantization import precision_statement

        entry = card["serving_precision"]
        lines += ["", f"**Serving precision.** {precision_statement(entry)} Method: {entry.get('method')}."]
    published = card.get("published_auroc")
    if published:
        lines += [
            "",
            "**AUROC published with the weights (published, not measured here; not an evaluation).** "
            f"Source: {published.get('source')}",
            "",
            "| Finding | Published AUROC |",
            "|---|---|",
        ]
        per_class = published.get("per_class") or {}
        lines += [f"| {name} | {value:.3f} |" for name, value in per_class.items()]
    return "\n".join(lines)


def _trained_card_lines(card: dict) -> list[str]:
    training = card.get("training", {})
    split = card.get("split", {})
    lines = [
        f"**Intended use.** {card.get('intended_use', '')}",
        "",
        f"- Base: {card.get('base')}",
        f"- Training data: {card.get('training_data')}",
        f"- Split: {split.get('train_images')} training / {split.get('val_images')} validation / "
        f"{split.get('test_images', 0)} test images, by {split.get('by')}",
        f"- Epochs run: {training.get('epochs_run')} (best {training.get('best_epoch')}; "
        f"{training.get('stopped_because')})",
        f"- Evaluation set: {card.get('evaluation_set')}",
        f"- Thresholds: {card.get('thresholds_rule')}",
        f"- Calibration: {(card.get('calibration') or {}).get('method') or 'none'}",
        "",
        "| Finding | AUROC (95 % CI) | Positives | Negatives | Threshold |",
        "|---|---|---|---|---|",
    ]
    for name, entry in (card.get("auroc") or {}).items():
        threshold = card.get("thresholds", {}).get(name)
        lines.append(
            f"| {name} | {_auroc_text(entry)} | {entry.get('positives')} | {entry.get('negatives')} | "
            f"{'-' if threshold is None else f'{threshold:.3f}'} |"
        )
    mean, ci = card.get("mean_auroc"), card.get("mean_auroc_ci")
    lines += [
        "",
        f"Mean AUROC: {'-' if mean is None else f'{mean:.3f}'}"
        + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""),
    ]
    return lines


def training_register(
    result: TrainResult, *, version_name: str, architecture: str, card: dict, user=None, base=None
):
    """Registers the trained weights as a new, inactive version with its calibration and thresholds
    (both chosen on the validation split), records which images trained and tuned it (and its
    base's), stores the validation evaluation (kind "validation": it chose the epoch, so its AUROC
    is optimistic), then scores the test split through the registered version's serving graph and
    stores that as its held-out evaluation, the one that speaks for it."""
    from django.conf import settings

    from learning.evaluation_services import model_version_evaluation_record
    from learning.scoring import score_with_serving_graph, training_images_record
    from registry.models import Evaluation
    from registry.services import model_version_register

    version = model_version_register(
        file=result.weights,
        version_name=version_name,
        class_names=result.class_names,
        architecture=architecture,
        preprocessing=result.preprocessing,
        thresholds=result.thresholds,
        notes=f"Trained by train_model: {card['training_data']}; see the model card.",
        user=user,
    )
    if result.calibration:
        version.calibration = {
            **result.calibration,
            "fitted_on": card["validation"]["set"][:300],
            "set_sha256": result.val_table.set_sha256(),
        }
        version.save(update_fields=["calibration"])
    training_images_record(
        version=version, train=result.train_pixel_ids, validation=result.val_pixel_ids, base=base
    )
    model_version_evaluation_record(
        version=version,
        table=result.val_table,
        scores=result.val_scores,
        raw_scores=result.val_raw_scores,
        evaluation_set=card["validation"]["set"],
        kind=Evaluation.VALIDATION,
        user=user,
        details={"thresholds_chosen": result.threshold_choices},
    )
    if result.test_table is not None:
        scored = score_with_serving_graph(
            version, result.test_table.paths, max_pixels=settings.LUNGSITE_MAX_PIXELS
        )
        test_table = result.test_table.subset(scored.scored)
        served, _ = calibration_apply(version.calibration, version.class_names, scored.raw)
        evaluation = model_version_evaluation_record(
            version=version,
            table=test_table,
            scores=served,
            raw_scores=scored.raw,
            features=scored.features,
            evaluation_set=card["evaluation_set"],
            user=user,
            details={"skipped_images": len(scored.skipped)},
        )
        card = {
            **card,
            "auroc": evaluation.per_class,
            "mean_auroc": evaluation.mean_auroc,
            "mean_auroc_ci": evaluation.mean_auroc_ci,
            "test_evaluation_id": evaluation.pk,
            "honesty": version.honesty()["state"],
        }
    version.model_card = card
    version.save(update_fields=["model_card"])
    return version


def training_run_execute(*, run_id: int):
    """Runs a TrainingRun row's training (the Celery task's body), storing progress on the row as it
    goes and the new version at the end. Idempotent: a run already done or running is left alone."""
    import tempfile

    from django.conf import settings
    from django.db import transaction
    from django.utils import timezone

    from engine.weights import load_model
    from learning.labels import LabelError, feedback_label_table, read_label_table
    from learning.models import TrainingRun
    from registry.models import DEFAULT_PREPROCESSING
    from registry.storage import weights_read

    with transaction.atomic():
        run = TrainingRun.objects.select_for_update().get(pk=run_id)
        if run.status != TrainingRun.QUEUED:
            return run
        run.status, run.started_at = TrainingRun.RUNNING, timezone.now()
        run.save(update_fields=["status", "started_at"])
    options = run.options
    last_saved = [0.0]

    def on_progress(progress: dict) -> None:
        # At most one write every 2 s: the row is for people watching, not a log.
        if time.monotonic() - last_saved[0] >= 2.0 or "val_mean_auroc" in progress:
            last_saved[0] = time.monotonic()
            TrainingRun.objects.filter(pk=run.pk).update(progress=progress)

    try:
        base = run.base_version
        class_names = list(base.class_names)
        tables = []
        if options.get("labels"):
            tables.append(
                read_label_table(
                    options["labels"],
                    options["images"],
                    class_names,
                    label_format=options.get("label_format", "auto"),
                    uncertain=options.get("uncertain", "ignore"),
                    limit=options.get("limit"),
                )
            )
        if options.get("feedback"):
            feedback = feedback_label_table(
                class_names,
                unsure=options.get("uncertain", "ignore"),
                blinded_only=bool(options.get("feedback_blinded_only")),
            )
            if feedback is not None:
                tables.append(feedback)
        if not tables:
            raise TrainingError("No labelled images: give a label table or use the feedback labels.")
        table = LabelTable.concatenate(tables)
        model = load_model(weights_read(base), architecture=base.architecture, num_classes=len(class_names))
        preprocessing = dict(base.preprocessing or DEFAULT_PREPROCESSING)
        with tempfile.TemporaryDirectory() as scratch:
            config = TrainConfig(
                epochs=int(options.get("epochs", 10)),
                batch_size=int(options.get("batch_size", 16)),
                lr=float(options.get("lr", 1e-4)),
                max_minutes=options.get("max_minutes"),
                input_size=int(options.get("input_size") or preprocessing.get("input_size", 224)),
                target_sensitivity=options.get("target_sensitivity"),
                test_fraction=float(options.get("test_fraction", 0.2)),
                calibration=options.get("calibration", "platt") or None,
                min_positives=int(settings.LUNGSITE_EVAL_MIN_POSITIVES),
                bootstrap_rounds=int(settings.LUNGSITE_BOOTSTRAP_ROUNDS),
                checkpoint_dir=Path(scratch),
            )
            result = train(
                table,
                model=model,
                architecture=base.architecture,
                config=config,
                preprocessing=preprocessing,
                on_progress=on_progress,
                stream=io.StringIO(),
                max_pixels=settings.LUNGSITE_MAX_PIXELS,
            )
        card = model_card(
            result,
            base=f"{base.version_name} (id {base.pk}, sha256 {base.short_sha256})",
            data_source=table.source,
            label_report=table.report.as_dict(),
        )
        version = training_register(
            result,
            version_name=options["version_name"],
            architecture=base.architecture,
            card=card,
            user=run.created_by,
            base=base,
        )
    except Exception as exc:  # noqa: BLE001 - recorded on the row for the admin to read
        logger.exception("training run %s failed", run.pk)
        message = str(exc) if isinstance(exc, TrainingError | LabelError) else f"{type(exc).__name__}: {exc}"
        TrainingRun.objects.filter(pk=run.pk).update(
            status=TrainingRun.FAILED, message=message[:2000], finished_at=timezone.now()
        )
        run.refresh_from_db()
        return run
    state = version.honesty()["state"].replace("_", " ")
    TrainingRun.objects.filter(pk=run.pk).update(
        status=TrainingRun.DONE,
        result_version=version,
        finished_at=timezone.now(),
        message=f"Registered {version.version_name} (inactive, {state}); test mean AUROC "
        f"{_mean_text(version.model_card)}; {result.stopped_because}.",
    )
    run.refresh_from_db()
    return run


def _mean_text(card: dict) -> str:
    mean, ci = card.get("mean_auroc"), card.get("mean_auroc_ci")
    if mean is None:
        return "- (no test split, or no finding with enough cases)"
    return f"{mean:.3f}" + (f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else "")
