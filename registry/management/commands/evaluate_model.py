import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from registry.evaluation import (
    EvaluationError,
    mean_auroc,
    per_class_auroc,
    read_labels,
    score_images,
    youden_thresholds,
)
from registry.management.commands._output import dumps, one_line
from registry.models import ModelVersion
from registry.selectors import model_version_get_by_ref
from registry.services import model_version_evaluation_save
from registry.storage import WeightsIntegrityError, weights_read


class Command(BaseCommand):
    help = "Scores a version on a labelled image set, stores per-class and mean AUROC on it (prints JSON)."

    def add_arguments(self, parser):
        parser.add_argument("ref", help="version id or version name")
        parser.add_argument(
            "--labels", required=True, help="CSV like nih_labels.csv: path (or file) + 0/1 columns"
        )
        parser.add_argument("--images", required=True, help="folder the CSV's paths are relative to")
        parser.add_argument("--limit", type=int, help="use only the first N rows of the CSV")
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument(
            "--set-thresholds", action="store_true", help="store per-class thresholds maximising Youden's J"
        )

    def handle(self, *args, **options):
        from inference.decode import decode
        from inference.pipeline import preprocess
        from inference.weights import WeightsError, load_model

        try:
            version = model_version_get_by_ref(options["ref"])
        except ModelVersion.DoesNotExist as exc:
            raise CommandError(one_line(f"No model version with id or name {options['ref']!r}.")) from exc
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        images_dir = Path(options["images"])
        if not images_dir.is_dir():
            raise CommandError(one_line(f"--images {images_dir} is not a folder."))
        class_names = list(version.class_names)
        try:
            labelled = read_labels(Path(options["labels"]), images_dir, class_names, limit=options["limit"])
        except EvaluationError as exc:
            raise CommandError(one_line(exc)) from exc
        try:
            model = load_model(
                weights_read(version), architecture=version.architecture, num_classes=len(class_names)
            )
        except (WeightsIntegrityError, WeightsError) as exc:
            raise CommandError(one_line(f"Cannot load {version.version_name}: {exc}")) from exc

        spec = version.preprocessing

        def load(path: Path):
            return preprocess(
                decode(path.read_bytes(), path.name, max_pixels=settings.LUNGSITE_MAX_PIXELS), spec
            )

        started = time.perf_counter()
        scores, scored, skipped = score_images(
            model, labelled.paths, load=load, batch_size=options["batch_size"]
        )
        seconds = time.perf_counter() - started
        if not scored:
            raise CommandError(one_line(f"None of the {len(labelled.paths)} images could be read."))
        labels = labelled.labels[scored]
        per_class = per_class_auroc(labels, scores, class_names)
        mean = mean_auroc(per_class)

        thresholds = youden_thresholds(labels, scores, class_names) if options["set_thresholds"] else None
        version = model_version_evaluation_save(
            version=version,
            per_class_auroc={name: entry["auroc"] for name, entry in per_class.items()},
            mean_auroc=mean,
            thresholds=thresholds,
        )

        self.stdout.write(
            dumps(
                {
                    "model": {
                        "id": version.pk,
                        "version_name": version.version_name,
                        "untrained": version.untrained,
                    },
                    "n_images": len(scored),
                    "skipped": skipped,
                    "per_class": per_class,
                    "unlabelled_classes": [
                        n for n, ok in zip(class_names, labelled.labelled, strict=True) if not ok
                    ],
                    "mean_auroc": mean,
                    "classes_in_mean": sum(entry["auroc"] is not None for entry in per_class.values()),
                    "thresholds_set": thresholds,
                    "seconds": round(seconds, 2),
                }
            )
        )
