import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from engine.architectures import ARCHITECTURES
from engine.weights import SOURCES
from engine.xrv_format import EXTRA_OUTPUTS
from registry.management.commands._output import dumps, one_line, refused, version_as_dict
from registry.models import ActivationEvent
from registry.services import (
    ActivationError,
    RegistrationError,
    model_version_activate,
    model_version_register,
)


def split_class_names(text: str) -> list[str]:
    """One name per line or comma separated; blank entries ignored."""
    return [name.strip() for line in text.splitlines() for name in line.split(",") if name.strip()]


class Command(BaseCommand):
    help = (
        "Checks a weights file, exports its serving graph, stores both and registers a version (prints JSON)."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "path", help="weights file: a state_dict or checkpoint (.pt/.pth) or a .safetensors file"
        )
        parser.add_argument("--version-name", required=True)
        classes = parser.add_mutually_exclusive_group()
        classes.add_argument(
            "--classes",
            help="comma-separated class names in output order (default: the 13 findings; "
            "TorchXRayVision's 18 labels for its weights)",
        )
        classes.add_argument("--classes-file", help="file with class names, one per line or comma separated")
        parser.add_argument("--architecture", default="densenet121", choices=ARCHITECTURES)
        parser.add_argument(
            "--source",
            default="auto",
            choices=SOURCES,
            help="the file's layout (auto: torchxrayvision when it holds op_threshs, else torchvision)",
        )
        parser.add_argument(
            "--extra-outputs",
            default="keep",
            choices=EXTRA_OUTPUTS,
            help="TorchXRayVision outputs beyond lungsite's findings (Hernia, Lung Lesion, ...)",
        )
        parser.add_argument("--auroc", type=float, help="mean AUROC measured elsewhere, 0..1")
        published = parser.add_mutually_exclusive_group()
        published.add_argument(
            "--published-auroc",
            help='AUROC per finding as published with the weights: "Effusion=0.87,Edema=0.85" '
            "(recorded as published, not measured here; never an evaluation)",
        )
        published.add_argument("--published-auroc-file", help='the same as a JSON object {"Effusion": 0.87}')
        parser.add_argument("--published-auroc-source", default="", help="where the AUROC was published")
        parser.add_argument("--thresholds-file", help='JSON object {"ClassName": 0.42, ...}')
        parser.add_argument(
            "--preprocessing-file",
            help="JSON object: profile (imagenet, torchxrayvision), input_size, channels, value_range, "
            "crop, resize, mean, std",
        )
        parser.add_argument("--notes", default="")
        parser.add_argument("--untrained", action="store_true", help="mark the weights as untrained")
        parser.add_argument(
            "--precision",
            default="fp32",
            choices=("fp32", "int8"),
            help="serving precision: fp32 (default) or int8 (ONNX Runtime static quantization, "
            "calibrated on real images; the version says so wherever its results appear)",
        )
        parser.add_argument(
            "--calibration-images",
            help="folder of real chest X-rays (PNG, JPEG or DICOM; the first 32 by name) to calibrate INT8 "
            "on: needed with --precision int8",
        )
        parser.add_argument("--activate", action="store_true", help="activate the version once registered")

    def _calibration(self, options) -> list[bytes] | None:
        if options["precision"] != "int8":
            return None
        if not options["calibration_images"]:
            raise CommandError("--precision int8 needs --calibration-images: a folder of real chest X-rays.")
        from registry.quantization import CalibrationError, calibration_images

        try:
            return calibration_images(Path(options["calibration_images"]))
        except CalibrationError as exc:
            raise CommandError(one_line(str(exc))) from exc

    def handle(self, *args, **options):
        path = Path(options["path"])
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise CommandError(one_line(f"Cannot read {path}: {exc.strerror or exc}")) from exc
        if options["classes"]:
            class_names = split_class_names(options["classes"])
        elif options["classes_file"]:
            class_names = split_class_names(self._read_text(options["classes_file"]))
        else:
            class_names = None  # the 13 findings, or TorchXRayVision's labels for its weights
        thresholds = self._read_json(options["thresholds_file"], "thresholds")
        preprocessing = self._read_json(options["preprocessing_file"], "preprocessing")
        if options["published_auroc"]:
            published = self._published_pairs(options["published_auroc"])
        else:
            published = self._read_json(options["published_auroc_file"], "published AUROC")
        try:
            version = model_version_register(
                data=data,
                version_name=options["version_name"],
                class_names=class_names,
                architecture=options["architecture"],
                source=options["source"],
                extra_outputs=options["extra_outputs"],
                preprocessing=preprocessing,
                thresholds=thresholds,
                auroc=options["auroc"],
                published_auroc=published,
                published_auroc_source=options["published_auroc_source"],
                notes=options["notes"],
                untrained=options["untrained"],
                precision=options["precision"],
                calibration_images=self._calibration(options),
                # The export takes seconds: say what is happening, on stderr so stdout stays JSON.
                progress=self.stderr.write,
            )
        except RegistrationError as exc:
            if "\n" in str(exc):
                # e.g. the two lines that turn a whole pickled model into a state dict, as lines.
                self.stderr.write(str(exc))
            raise CommandError(one_line(refused(exc))) from exc
        self.stderr.write(f"Registered {version.version_name} as id {version.pk}.")
        if options["activate"]:
            self.stderr.write(f"Activating {version.version_name}...")
            try:
                version = model_version_activate(version=version, via=ActivationEvent.VIA_COMMAND)
            except ActivationError as exc:
                raise CommandError(
                    one_line(f"Registered as id {version.pk} but not activated: {exc}")
                ) from exc
        self.stdout.write(dumps(version_as_dict(version)))

    def _published_pairs(self, text: str) -> dict[str, float]:
        """ "Effusion=0.87,Edema=0.85" -> {"Effusion": 0.87, "Edema": 0.85}."""
        pairs = {}
        for item in text.split(","):
            name, sep, value = item.partition("=")
            try:
                if not sep or not name.strip():
                    raise ValueError
                pairs[name.strip()] = float(value)
            except ValueError:
                raise CommandError(
                    one_line(f"--published-auroc takes Name=AUROC pairs separated by commas, not {item!r}.")
                ) from None
        return pairs

    def _read_text(self, name: str) -> str:
        try:
            return Path(name).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(one_line(f"Cannot read {name}: {exc}")) from exc

    def _read_json(self, name: str | None, what: str):
        if not name:
            return None
        try:
            return json.loads(self._read_text(name))
        except json.JSONDecodeError as exc:
            raise CommandError(one_line(f"The {what} file {name} is not valid JSON: {exc}")) from exc
