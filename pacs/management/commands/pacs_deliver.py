import json
import time

from django.core.management.base import BaseCommand

from pacs import services
from pacs.models import ResultObject


class Command(BaseCommand):
    help = "Send the PACS result objects that are due (once, or every --every seconds); print JSON counts."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, help="Repeat every N seconds (0: once).")
        parser.add_argument("--retry-failed", action="store_true", help="Queue failed objects again first.")

    def handle(self, *args, **options):
        if options["retry_failed"]:
            services.results_retry_failed()
        while True:
            results = services.results_deliver_due()
            counts = {
                state: sum(r.state == state for r in results) for state, _ in ResultObject.STATE_CHOICES
            }
            counts["pending_total"] = ResultObject.objects.filter(state=ResultObject.PENDING).count()
            self.stdout.write(json.dumps(counts))
            if not options["every"]:
                return
            time.sleep(options["every"])
