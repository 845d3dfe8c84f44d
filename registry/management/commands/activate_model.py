from django.core.management.base import BaseCommand, CommandError

from registry.management.commands._output import dumps, one_line, refused, version_as_dict
from registry.models import ActivationEvent, ModelVersion
from registry.selectors import model_version_get_active, model_version_get_by_ref
from registry.services import ActivationError, model_version_activate, model_version_rollback


class Command(BaseCommand):
    help = "Activates a model version by id or name, or rolls back to the previous one (prints JSON)."

    def add_arguments(self, parser):
        target = parser.add_mutually_exclusive_group(required=True)
        target.add_argument("ref", nargs="?", help="version id or version name")
        target.add_argument(
            "--rollback",
            action="store_true",
            help="activate the version that was active before the current one",
        )
        parser.add_argument(
            "--override-reason",
            default="",
            help="why to activate a version the evaluation gate refuses (kept in the history)",
        )

    def handle(self, *args, **options):
        previous = model_version_get_active()
        try:
            if options["rollback"]:
                version = model_version_rollback(via=ActivationEvent.VIA_COMMAND)
            else:
                try:
                    version = model_version_get_by_ref(options["ref"])
                except ModelVersion.DoesNotExist as exc:
                    raise CommandError(
                        one_line(f"No model version with id or name {options['ref']!r}.")
                    ) from exc
                version = model_version_activate(
                    version=version,
                    via=ActivationEvent.VIA_COMMAND,
                    override_reason=options["override_reason"],
                )
        except ActivationError as exc:
            raise CommandError(one_line(refused(exc))) from exc
        changed = previous is None or previous.pk != version.pk
        self.stdout.write(
            dumps(
                {
                    "activated": version_as_dict(version),
                    "previous": version_as_dict(previous) if changed else None,
                    "changed": changed,
                }
            )
        )
