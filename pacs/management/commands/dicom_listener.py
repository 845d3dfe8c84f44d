import json

from django.conf import settings
from django.core.management.base import BaseCommand

from pacs.listener import listener_start


class Command(BaseCommand):
    help = "Run the DICOM C-STORE receiver (AE LUNGSITE_DICOM_AE_TITLE on LUNGSITE_DICOM_PORT)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.LUNGSITE_DICOM_HOST)
        parser.add_argument("--port", type=int, default=settings.LUNGSITE_DICOM_PORT)

    def handle(self, *args, **options):
        listening = {
            "ae_title": settings.LUNGSITE_DICOM_AE_TITLE,
            "host": options["host"],
            "port": options["port"],
        }
        self.stdout.write(json.dumps({"listening": listening}))
        self.stdout.flush()
        listener_start(host=options["host"], port=options["port"], block=True)
