"""The DICOM C-STORE receiver (pynetdicom): an AE whose C-STORE handler hands each dataset to
pacs.services.instance_receive and answers with a status. `manage.py dicom_listener` runs it.

The door: it listens on loopback unless told otherwise; it accepts associations only from the
calling AE titles in LUNGSITE_DICOM_CALLING_AETS and only when called by its own AE title; with a
certificate (LUNGSITE_DICOM_TLS_CERT/KEY) it speaks DICOM TLS, and with a CA file it asks callers
for a certificate that CA signed. A network address with no allow-list is refused at start.
"""

from __future__ import annotations

import ipaddress
import logging
import ssl

from django.conf import settings
from django.db import close_old_connections
from pynetdicom import AE, ALL_TRANSFER_SYNTAXES, AllStoragePresentationContexts, evt
from pynetdicom.sop_class import (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

logger = logging.getLogger(__name__)

# The radiograph classes, in every transfer syntax (the decoder reads JPEG, JPEG 2000, RLE, ...).
# Many chest films arrive as secondary captures (digitised or exported), so that class is here too.
RADIOGRAPH_SOP_CLASSES = (
    ComputedRadiographyImageStorage,
    DigitalXRayImageStorageForPresentation,
    DigitalXRayImageStorageForProcessing,
    SecondaryCaptureImageStorage,
)
# C-STORE statuses (PS3.4 Annex B.2.3).
SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
CANNOT_UNDERSTAND = 0xC000
PROCESSING_FAILURE = 0x0110


class ListenerRefused(Exception):
    """The listener's settings would open the door wider than they say (see the module)."""


def handle_store(event) -> int:
    """EVT_C_STORE: record the instance and queue it (pacs.services); answer at once."""
    from pacs.models import ReceivedInstance
    from pacs.services import InstanceRefused, QueueUnavailable, instance_receive

    close_old_connections()  # this thread serves many associations, as a web worker serves requests
    try:
        try:
            data = event.encoded_dataset()
        except Exception as exc:  # noqa: BLE001 - a dataset the peer sent but that cannot be encoded
            logger.warning("C-STORE dataset cannot be read: %s", exc)
            return CANNOT_UNDERSTAND
        instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_CSTORE)
        return SUCCESS
    except InstanceRefused as exc:
        logger.warning("C-STORE refused: %s", exc)
        return exc.status
    except QueueUnavailable:
        return OUT_OF_RESOURCES  # the sender keeps the instance and may send it again
    except Exception:
        logger.exception("C-STORE handler failed")
        return PROCESSING_FAILURE
    finally:
        close_old_connections()


def calling_aets() -> list[str]:
    """The calling AE titles that may associate ([] or ["*"]: any)."""
    return [title for title in settings.LUNGSITE_DICOM_CALLING_AETS if title != "*"]


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def tls_context() -> ssl.SSLContext | None:
    """The server's TLS context from the settings, or None (plain DICOM)."""
    if not settings.LUNGSITE_DICOM_TLS_CERT:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.LUNGSITE_DICOM_TLS_CERT, settings.LUNGSITE_DICOM_TLS_KEY or None)
    if settings.LUNGSITE_DICOM_TLS_CA:
        context.load_verify_locations(cafile=settings.LUNGSITE_DICOM_TLS_CA)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def application_entity() -> AE:
    """The AE with its supported contexts: Verification, the radiograph classes in all transfer
    syntaxes, and every other storage class in the default ones (a PACS routes whole studies:
    those instances are recorded as skipped with the reason rather than refused unseen). Callers
    must call it by its AE title, and be on the allow-list when there is one."""
    ae = AE(ae_title=settings.LUNGSITE_DICOM_AE_TITLE)
    ae.maximum_pdu_size = 0  # no limit: the peer's PDU size decides
    ae.require_called_aet = True
    ae.require_calling_aet = calling_aets()
    ae.add_supported_context(Verification)
    for sop_class in RADIOGRAPH_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax not in RADIOGRAPH_SOP_CLASSES:
            ae.add_supported_context(context.abstract_syntax)
    return ae


def listener_start(*, host: str, port: int, block: bool) -> ThreadedAssociationServer | None:
    """Starts serving C-ECHO and C-STORE on host:port. block=False returns the server (call
    .shutdown() to stop it). Raises ListenerRefused for a network address without an allow-list
    of calling AE titles (LUNGSITE_DICOM_CALLING_AETS; "*" says any, on purpose)."""
    if not _loopback(host) and not settings.LUNGSITE_DICOM_CALLING_AETS:
        raise ListenerRefused(
            f"The DICOM listener would accept any caller on {host}: set LUNGSITE_DICOM_CALLING_AETS to "
            'the calling AE titles of your PACS (or "*" to accept any, e.g. behind a firewall that '
            "admits only the PACS). See docs/pacs.md."
        )
    ae = application_entity()
    handlers = [(evt.EVT_C_STORE, handle_store)]
    context = tls_context()
    logger.info(
        "DICOM listener %s on %s:%s (%s; callers: %s)",
        settings.LUNGSITE_DICOM_AE_TITLE,
        host,
        port,
        "TLS" if context else "no TLS",
        ", ".join(calling_aets()) or "any",
    )
    return ae.start_server((host, port), block=block, evt_handlers=handlers, ssl_context=context)
