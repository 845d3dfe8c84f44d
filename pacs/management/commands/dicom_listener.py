import json
import threading

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from pacs.listener import ListenerRefused, calling_aets, listener_start, tls_context


class Command(BaseCommand):
    help = "Run the DICOM C-STORE receiver (AE LUNGSITE_DICOM_AE_TITLE on LUNGSITE_DICOM_HOST:PORT)."

    def add_arguments(self, parser):
        parser.add_argument("--host", default=settings.LUNGSITE_DICOM_HOST)
        parser.add_argument("--port", type=int, default=settings.LUNGSITE_DICOM_PORT)

    def handle(self, *args, **options):
        try:
            server = listener_start(host=options["host"], port=options["port"], block=False)
        except ListenerRefused as exc:
            raise CommandError(str(exc)) from exc
        listening = {
            "ae_title": settings.LUNGSITE_DICOM_AE_TITLE,
            "host": options["host"],
            "port": options["port"],
            "calling_ae_titles": calling_aets() or "any",
            "tls": tls_context() is not None,
        }
        self.stdout.write(json.dumps({"listening": listening}))
        self.stdout.flush()
        try:
            threading.Event().wait()  # the server's own thread serves; this one waits for a signal
        finally:
            server.shutdown()
