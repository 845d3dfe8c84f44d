import datetime as dt
import json
import re

from django.core.management.base import BaseCommand, CommandError

from audit.sweep import images_orphaned_sweep

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def duration(text: str) -> dt.timedelta:
    """`90m`, `1h`, `2d`, `3600s` or plain seconds."""
    found = re.fullmatch(r"\s*(\d+)\s*([smhd]?)\s*", text)
    if not found:
        raise ValueError(f"{text!r} is not a duration such as 90m, 1h or 2d")
    return dt.timedelta(seconds=int(found[1]) * _UNITS[found[2] or "s"])


class Command(BaseCommand):
    help = "Removes stored images that no prediction row names, older than --older-than; prints JSON."

    def add_arguments(self, parser):
        parser.add_argument(
            "--older-than",
            default="1h",
            metavar="AGE",
            help="Only files last written before this age (default 1h; at least 10m): 90m, 1h, 2d.",
        )
        parser.add_argument(
            "--dry-run", action="store_true", help="Report what would be removed; remove nothing."
        )

    def handle(self, *args, **options):
        try:
            report = images_orphaned_sweep(
                older_than=duration(options["older_than"]), dry_run=options["dry_run"]
            )
        except ValueError as exc:
            raise CommandError(str(exc)) from exc
        self.stdout.write(json.dumps(report))
