import json

from django.core.management.base import BaseCommand, CommandError

from audit.checkpoints import checkpoint_scheduled


class Command(BaseCommand):
    help = "Signs a checkpoint of the audit chain's head if new rows verify; prints JSON (for cron)."

    def add_arguments(self, parser):
        parser.add_argument("--database", default="default")

    def handle(self, *args, **options):
        result = checkpoint_scheduled(using=options["database"])
        self.stdout.write(json.dumps(result))
        if result["reason"].startswith("refused"):
            raise CommandError(f"no checkpoint written: {result['reason']}", returncode=1)
