import sys
import tempfile
from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from learning.labels import UNCERTAIN_POLICIES, LabelError, LabelTable, feedback_label_table, read_label_table
from registry.management.commands._output import dumps, one_line, version_as_dict
from registry.models import DEFAULT_CLASS_NAMES, DEFAULT_PREPROCESSING, ModelVersion
from registry.selectors import model_version_get_by_ref


def add_training_arguments(parser) -> None:
    parser.add_argument(
        "--labels", action="append", default=[], help="label CSV: NIH, CheXpert or one-hot (repeatable)"
    )
    parser.add_argument(
        "--images", action="append", default=[], help="folder of each --labels table's images"
    )
    parser.add_argument("--label-format", default="auto", choices=["auto", "nih", "chexpert", "onehot"])
    parser.add_argument(
        "--uncertain", default="ignore", choices=UNCERTAIN_POLICIES, help="CheXpert -1 / unsure marks"
    )
    parser.add_argument(
        "--feedback", action="store_true", help="add the feedback-labelled predictions of the audit log"
    )
    parser.add_argument(
        "--feedback-blinded-only",
        action="store_true",
        help="with --feedback, only marks given without seeing the model's output",
    )
    parser.add_argument("--limit", type=int, help="use only the first N images of each table")


def label_tables(options, class_names: list[str]) -> LabelTable:
    """The label tables the options name, joined; CommandError when none gives images."""
    if len(options["labels"]) != len(options["images"]):
        raise CommandError("Give one --images folder per --labels table.")
    tables = []
    try:
        for labels, images in zip(options["labels"], options["images"], strict=True):
            if not Path(images).is_dir():
                raise CommandError(one_line(f"--images {images} is not a folder."))
            tables.append(
                read_label_table(
                    labels,
                    images,
                    class_names,
                    label_format=options["label_format"],
                    uncertain=options["uncertain"],
                    limit=options["limit"],
                )
            )
        if options["feedback"]:
            feedback = feedback_label_table(
                class_names, unsure=options["uncertain"], blinded_only=options["feedback_blinded_only"]
            )
            if feedback is not None:
                tables.append(feedback)
    except LabelError as exc:
        raise CommandError(one_line(exc)) from exc
    if not tables:
        raise CommandError(
            "No labelled images: give --labels/--images or --feedback (with feedback in the audit log)."
        )
    return LabelTable.concatenate(tables)


class Command(BaseCommand):
    help = (
        "Fine-tunes a version (or fresh network) on labelled images; registers it inactive with its "
        "held-out test evaluation (JSON)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "ref", nargs="?", help="version id or name to start from (omit with --architecture)"
        )
        parser.add_argument(
            "--architecture", help="start from a fresh, randomly initialised network of this architecture"
        )
        parser.add_argument("--version-name", required=True, help="name of the new version")
        add_training_arguments(parser)
        parser.add_argument("--epochs", type=int, default=10)
        parser.add_argument("--batch-size", type=int, default=16)
        parser.add_argument("--lr", type=float, default=1e-4)
        parser.add_argument("--max-minutes", type=float, help="stop training after this many minutes")
        parser.add_argument(
            "--input-size", type=int, help="input size in pixels (default: the base version's)"
        )
        parser.add_argument(
            "--val-fraction",
            type=float,
            default=0.2,
            help="share for choosing epoch, thresholds, calibration",
        )
        parser.add_argument(
            "--test-fraction",
            type=float,
            default=0.2,
            help="share held out for the figures the version is judged by (0: none; evaluate it elsewhere)",
        )
        parser.add_argument(
            "--calibration",
            default="platt",
            choices=["platt", "temperature", "none"],
            help="calibration fitted on the validation split (default platt)",
        )
        parser.add_argument("--patience", type=int, default=3, help="early stop after N epochs without gain")
        parser.add_argument(
            "--target-sensitivity",
            type=float,
            help="thresholds reaching this sensitivity instead of Youden's J",
        )
        parser.add_argument(
            "--checkpoints", help="folder for best.pt / last.pt (default: a temporary folder)"
        )
        parser.add_argument("--seed", type=int, default=0)
        parser.add_argument("--device", help="cpu or cuda (default: what torch finds)")
        parser.add_argument("--outputs-csv", help="also write the validation labels and scores to this CSV")

    def handle(self, *args, **options):
        from learning.training import TrainConfig, TrainingError, model_card, train, training_register
        from registry.services import RegistrationError

        for name in ("epochs", "batch_size"):
            if options[name] < 1:
                raise CommandError(f"--{name.replace('_', '-')} must be at least 1.")
        if not 0 < options["val_fraction"] < 1:
            raise CommandError("--val-fraction must be between 0 and 1.")
        if not 0 <= options["test_fraction"] < 1 or options["val_fraction"] + options["test_fraction"] >= 1:
            raise CommandError("--test-fraction must be in [0, 1) and leave images for training.")
        if options["target_sensitivity"] is not None and not 0 < options["target_sensitivity"] <= 1:
            raise CommandError("--target-sensitivity must be in (0, 1].")
        if ModelVersion.objects.filter(version_name=options["version_name"]).exists():
            raise CommandError(one_line(f"A version named {options['version_name']!r} already exists."))
        model, architecture, class_names, preprocessing, base, base_version = self._start(options)
        table = label_tables(options, class_names)
        config = TrainConfig(
            epochs=options["epochs"],
            batch_size=options["batch_size"],
            lr=options["lr"],
            max_minutes=options["max_minutes"],
            input_size=options["input_size"] or int(preprocessing.get("input_size", 224)),
            val_fraction=options["val_fraction"],
            test_fraction=options["test_fraction"],
            calibration=None if options["calibration"] == "none" else options["calibration"],
            min_positives=int(settings.LUNGSITE_EVAL_MIN_POSITIVES),
            bootstrap_rounds=int(settings.LUNGSITE_BOOTSTRAP_ROUNDS),
            patience=options["patience"],
            seed=options["seed"],
            target_sensitivity=options["target_sensitivity"],
            device=options["device"],
        )
        with tempfile.TemporaryDirectory() as scratch:
            config.checkpoint_dir = Path(options["checkpoints"] or scratch)
            try:
                result = train(
                    table,
                    model=model,
                    architecture=architecture,
                    config=config,
                    preprocessing=preprocessing,
                    stream=sys.stderr,
                    max_pixels=settings.LUNGSITE_MAX_PIXELS,
                )
            except TrainingError as exc:
                raise CommandError(one_line(exc)) from exc
        card = model_card(result, base=base, data_source=table.source, label_report=table.report.as_dict())
        try:
            version = training_register(
                result,
                version_name=options["version_name"],
                architecture=architecture,
                card=card,
                base=base_version,
            )
        except RegistrationError as exc:
            raise CommandError(one_line(exc)) from exc
        if options["outputs_csv"]:
            write_outputs_csv(Path(options["outputs_csv"]), result.val_table, result.val_scores)
        card = version.model_card
        honesty = version.honesty()
        self.stdout.write(
            dumps(
                {
                    "version": version_as_dict(version),
                    "honesty": {"state": honesty["state"], "statement": honesty["statement"]},
                    "test": {
                        "evaluation_set": card.get("evaluation_set"),
                        "evaluation_id": card.get("test_evaluation_id"),
                        "per_class": card.get("auroc"),
                        "mean_auroc": card.get("mean_auroc"),
                        "mean_auroc_ci": card.get("mean_auroc_ci"),
                    },
                    "validation": {"per_class": result.per_class, "mean_auroc": result.mean_auroc},
                    "per_class": result.per_class,
                    "mean_auroc": result.mean_auroc,
                    "calibration": result.calibration,
                    "thresholds": result.thresholds,
                    "threshold_intervals": card.get("threshold_intervals"),
                    "split": {k: v for k, v in result.split.items() if k != "skipped_images"},
                    "skipped": result.split["skipped_images"],
                    "labels": table.report.as_dict(),
                    "history": result.history,
                    "stopped_because": result.stopped_because,
                    "seconds": result.seconds,
                    "device": result.device,
                }
            )
        )

    def _start(self, options):
        from engine.weights import WeightsError, load_model
        from learning.training import build_network
        from registry.storage import WeightsIntegrityError, weights_read

        if options["ref"] and options["architecture"]:
            raise CommandError("Give a version to start from or --architecture, not both.")
        if options["architecture"]:
            try:
                model = build_network(options["architecture"], len(DEFAULT_CLASS_NAMES))
            except WeightsError as exc:
                raise CommandError(one_line(exc)) from exc
            base = f"fresh {options['architecture']} (random initialisation, no pretrained weights)"
            return (
                model,
                options["architecture"],
                list(DEFAULT_CLASS_NAMES),
                dict(DEFAULT_PREPROCESSING),
                base,
                None,
            )
        if not options["ref"]:
            raise CommandError("Give a version id or name to start from, or --architecture.")
        try:
            version = model_version_get_by_ref(options["ref"])
        except ModelVersion.DoesNotExist as exc:
            raise CommandError(one_line(f"No model version with id or name {options['ref']!r}.")) from exc
        try:
            model = load_model(
                weights_read(version), architecture=version.architecture, num_classes=len(version.class_names)
            )
        except (WeightsIntegrityError, WeightsError) as exc:
            raise CommandError(one_line(f"Cannot load {version.version_name}: {exc}")) from exc
        untrained = ", untrained" if version.untrained else ""
        base = f"{version.version_name} (id {version.pk}, sha256 {version.short_sha256}{untrained})"
        return (
            model,
            version.architecture,
            list(version.class_names),
            dict(version.preprocessing or DEFAULT_PREPROCESSING),
            base,
            version,
        )


def write_outputs_csv(path: Path, table: LabelTable, scores) -> None:
    """image, patient, label_<class>..., score_<class>...: what the AUROC table is computed from."""
    from common.csv_export import CsvWriter

    with path.open("w", newline="") as handle:
        writer = CsvWriter(handle)
        names = table.class_names
        writer.writerow(["image", "patient", *(f"label_{n}" for n in names), *(f"score_{n}" for n in names)])
        for p, patient, labels, row in zip(table.paths, table.patients, table.labels, scores, strict=True):
            writer.writerow(
                [p.name, patient, *("" if v != v else int(v) for v in labels), *(f"{s:.6f}" for s in row)]
            )
