import time

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from learning.calibration import METHODS, calibration_apply, calibration_fit
from learning.evaluation_services import model_version_calibration_store, model_version_evaluation_record
from learning.intervals import threshold_choice
from learning.management.commands.train_model import add_training_arguments, label_tables
from learning.scoring import score_with_serving_graph, training_images_seen
from registry.management.commands._output import dumps, one_line
from registry.models import Evaluation, ModelVersion
from registry.selectors import model_version_get_by_ref
from registry.storage import WeightsIntegrityError


class Command(BaseCommand):
    help = (
        "Scores a version on a labelled set through its serving graph; stores AUROC with 95 % intervals, "
        "calibration, subgroups and its feature reference (prints JSON)."
    )

    def add_arguments(self, parser):
        parser.add_argument("ref", help="version id or version name")
        add_training_arguments(parser)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument(
            "--set-thresholds", action="store_true", help="store per-class thresholds maximising Youden's J"
        )
        parser.add_argument(
            "--target-sensitivity",
            type=float,
            help="store per-class thresholds reaching this sensitivity on this set (with their interval)",
        )
        parser.add_argument(
            "--fit-calibration",
            choices=METHODS,
            help="fit a per-finding calibration on this set and serve with it (evaluate on another set "
            "to measure it)",
        )
        parser.add_argument(
            "--include-seen",
            action="store_true",
            help="keep images the version was trained or tuned on; the evaluation is then marked in sample "
            "and never speaks for the version",
        )

    def handle(self, *args, **options):
        from engine.weights import WeightsError

        try:
            version = model_version_get_by_ref(options["ref"])
        except ModelVersion.DoesNotExist as exc:
            raise CommandError(one_line(f"No model version with id or name {options['ref']!r}.")) from exc
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        target = options["target_sensitivity"]
        if target is not None and not 0 < target <= 1:
            raise CommandError("--target-sensitivity must be in (0, 1].")
        class_names = list(version.class_names)
        labelled = label_tables(options, class_names)

        started = time.perf_counter()
        try:
            scored = score_with_serving_graph(
                version,
                labelled.paths,
                max_pixels=settings.LUNGSITE_MAX_PIXELS,
                batch_size=options["batch_size"],
            )
        except (WeightsIntegrityError, WeightsError) as exc:
            raise CommandError(one_line(f"Cannot load {version.version_name}: {exc}")) from exc
        seconds = time.perf_counter() - started
        if not scored.scored:
            raise CommandError(one_line(f"None of the {labelled.report.rows} images could be read."))

        kind, seen_images, keep = Evaluation.HELD_OUT, [], list(range(len(scored.scored)))
        seen = training_images_seen(version, scored.pixel_ids)
        if seen:
            seen_images = [
                labelled.paths[i].name
                for i, pid in zip(scored.scored, scored.pixel_ids, strict=True)
                if pid in seen
            ]
            if options["include_seen"]:
                kind = Evaluation.IN_SAMPLE
            else:
                keep = [j for j, pid in enumerate(scored.pixel_ids) if pid not in seen]
                if not keep:
                    raise CommandError(
                        one_line(
                            f"All {len(scored.scored)} readable images were used to train or tune "
                            f"{version.version_name}; an evaluation on them would say nothing about new "
                            "images. Evaluate it on other images (or --include-seen to record an in-sample "
                            "evaluation, which never speaks for the version)."
                        )
                    )
        table = labelled.subset([scored.scored[j] for j in keep])
        raw = scored.raw[keep]
        features = scored.features[keep]
        served, _ = calibration_apply(version.calibration, class_names, raw)

        thresholds, chosen = None, {}
        if options["set_thresholds"] or target is not None:
            for k, name in enumerate(class_names):
                known = ~np.isnan(table.labels[:, k])
                choice = threshold_choice(
                    table.labels[known, k],
                    served[known, k],
                    [table.patients[i] for i in np.flatnonzero(known)],
                    target_sensitivity=target,
                    rounds=int(settings.LUNGSITE_BOOTSTRAP_ROUNDS),
                    seed=0,
                )
                if choice is not None:
                    chosen[name] = choice
            thresholds = {name: choice["threshold"] for name, choice in chosen.items()}

        notes = []
        if kind == Evaluation.IN_SAMPLE:
            notes.append(
                f"{len(seen_images)} of these images trained or tuned this version: in sample, optimistic, "
                "never in force."
            )
        elif seen_images:
            notes.append(f"{len(seen_images)} images the version was trained or tuned on were left out.")
        if chosen:
            notes.append("Thresholds were chosen on this set: their operating points here are optimistic.")
        calibration = version.calibration or {}
        if calibration and calibration.get("set_sha256") == table.set_sha256():
            notes.append(
                "The calibration was fitted on this set: its ECE and Brier score here are optimistic."
            )
        if options["fit_calibration"]:
            notes.append(
                "A calibration was fitted on this set after these figures were measured; measure it on "
                "another set."
            )
        evaluation_set = f"{labelled.source}: {len(table.paths)} images"
        evaluation = model_version_evaluation_record(
            version=version,
            table=table,
            scores=served,
            raw_scores=raw,
            features=features,
            evaluation_set=evaluation_set,
            thresholds=thresholds,
            kind=kind,
            details={
                "seen_images": len(seen_images),
                "seen_examples": seen_images[:5],
                "skipped_images": len(scored.skipped),
                "thresholds_chosen": chosen,
                "notes": notes,
            },
        )
        fitted = None
        if options["fit_calibration"]:
            fitted = calibration_fit(
                table.labels,
                raw,
                class_names,
                method=options["fit_calibration"],
                min_positives=int(settings.LUNGSITE_EVAL_MIN_POSITIVES),
            )
            fitted["set_sha256"] = table.set_sha256()
            model_version_calibration_store(
                version=version, calibration=fitted, fitted_on=evaluation_set, evaluation=evaluation
            )
        version.refresh_from_db()
        honesty = version.honesty()
        self.stdout.write(
            dumps(
                {
                    "model": {
                        "id": version.pk,
                        "version_name": version.version_name,
                        "untrained": version.untrained,
                    },
                    "evaluation_id": evaluation.pk,
                    "kind": kind,
                    "n_images": len(table.paths),
                    "skipped": scored.skipped,
                    "seen_images": len(seen_images),
                    "per_class": evaluation.per_class,
                    "unlabelled_classes": [
                        n for n, ok in zip(class_names, table.labelled, strict=True) if not ok
                    ],
                    "labels": labelled.report.as_dict(),
                    "evaluation_set": evaluation.evaluation_set,
                    "mean_auroc": evaluation.mean_auroc,
                    "mean_auroc_ci": evaluation.mean_auroc_ci,
                    "classes_in_mean": sum(bool(e.get("evaluable")) for e in evaluation.per_class.values()),
                    "calibration": {
                        name: {"ece": entry["ece"], "brier": entry["brier"]}
                        for name, entry in evaluation.details["calibration"].items()
                    },
                    "subgroups": evaluation.details["subgroups"],
                    "ood": evaluation.details["ood"],
                    "thresholds_set": thresholds,
                    "thresholds_chosen": chosen,
                    "calibration_fitted": fitted,
                    "honesty": {"state": honesty["state"], "statement": honesty["statement"]},
                    "notes": notes,
                    "seconds": round(seconds, 2),
                }
            )
        )
