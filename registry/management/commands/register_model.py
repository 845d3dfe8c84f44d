import json
from pathlib import Path

from django.core.management.base import BaseCommand, CommandError

from engine.architectures import ARCHITECTURES
from registry.management.commands._output import dumps, one_line, refused, version_as_dict
from registry.models import DEFAULT_CLASS_NAMES, ActivationEvent
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
        parser.add_argument("path", help="weights file (.pt/.pth state_dict or checkpoint)")
        parser.add_argument("--version-name", required=True)
        classes = parser.add_mutually_exclusive_group()
        classes.add_argument(
            "--classes", help="comma-separated class names in output order (default: the 13)"
        )
        classes.add_argument("--classes-file", help="file with class names, one per line or comma separated")
        parser.add_argument("--architecture", default="densenet121", choices=ARCHITECTURES)
        parser.add_argument("--auroc", type=float, help="mean AUROC measured elsewhere, 0..1")
        parser.add_argument("--thresholds-file", help='JSON object {"ClassName": 0.42, ...}')
        parser.add_argument("--preprocessing-file", help="JSON object: input_size, channels, mean, std")
        parser.add_argument("--notes", default="")
        parser.add_argument("--untrained", action="store_true", help="mark the weights as untrained")
        parser.add_argument("--activate", action="store_true", help="activate the version once registered")

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
            class_names = list(DEFAULT_CLASS_NAMES)
        thresholds = self._read_json(options["thresholds_file"], "thresholds")
        preprocessing = self._read_json(options["preprocessing_file"], "preprocessing")
        try:
            version = model_version_register(
                data=data,
                version_name=options["version_name"],
                class_names=class_names,
                architecture=options["architecture"],
                preprocessing=preprocessing,
                thresholds=thresholds,
                auroc=options["auroc"],
                notes=options["notes"],
                untrained=options["untrained"],
                # The export takes seconds: say what is happening, on stderr so stdout stays JSON.
                progress=self.stderr.write,
            )
        except RegistrationError as exc:
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
