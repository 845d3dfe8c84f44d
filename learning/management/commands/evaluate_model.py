import time
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from learning.evaluation import mean_auroc, per_class_auroc, score_images, youden_thresholds
from learning.evaluation_services import model_version_evaluation_record
from learning.management.commands.train_model import add_training_arguments, label_tables
from registry.management.commands._output import dumps, one_line
from registry.models import ModelVersion
from registry.selectors import model_version_get_by_ref
from registry.storage import WeightsIntegrityError, weights_read


class Command(BaseCommand):
    help = "Scores a version on a labelled image set, stores per-class and mean AUROC on it (prints JSON)."

    def add_arguments(self, parser):
        parser.add_argument("ref", help="version id or version name")
        add_training_arguments(parser)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument(
            "--set-thresholds", action="store_true", help="store per-class thresholds maximising Youden's J"
        )

    def handle(self, *args, **options):
        from engine.decode import decode
        from engine.pipeline import preprocess
        from engine.weights import WeightsError, load_model

        try:
            version = model_version_get_by_ref(options["ref"])
        except ModelVersion.DoesNotExist as exc:
            raise CommandError(one_line(f"No model version with id or name {options['ref']!r}.")) from exc
        if options["limit"] is not None and options["limit"] < 1:
            raise CommandError("--limit must be at least 1.")
        class_names = list(version.class_names)
        labelled = label_tables(options, class_names)
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
            raise CommandError(one_line(f"None of the {labelled.report.rows} images could be read."))
        scored_set = labelled.subset(scored)
        labels = scored_set.labels
        per_class = per_class_auroc(labels, scores, class_names)
        mean = mean_auroc(per_class)

        thresholds = youden_thresholds(labels, scores, class_names) if options["set_thresholds"] else None
        model_version_evaluation_record(
            version=version,
            table=scored_set,
            scores=scores,
            evaluation_set=f"{labelled.source}: {len(scored)} images",
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
                        n for n, ok in zip(class_names, scored_set.labelled, strict=True) if not ok
                    ],
                    "labels": labelled.report.as_dict(),
                    "evaluation_set": version.evaluation_set,
                    "mean_auroc": mean,
                    "classes_in_mean": sum(entry["auroc"] is not None for entry in per_class.values()),
                    "thresholds_set": thresholds,
                    "seconds": round(seconds, 2),
                }
            )
        )
