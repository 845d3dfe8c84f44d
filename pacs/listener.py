"""The DICOM C-STORE receiver (pynetdicom): an AE whose C-STORE handler hands each dataset to
pacs.services.instance_receive and answers with a status. `manage.py dicom_listener` runs it."""

from __future__ import annotations

import logging

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
        return CANNOT_UNDERSTAND
    except QueueUnavailable:
        return OUT_OF_RESOURCES  # the sender keeps the instance and may send it again
    except Exception:
        logger.exception("C-STORE handler failed")
        return PROCESSING_FAILURE
    finally:
        close_old_connections()


def application_entity() -> AE:
    """The AE with its supported contexts: Verification, the radiograph classes in all transfer
    syntaxes, and every other storage class in the default ones (a PACS routes whole studies:
    those instances are recorded as skipped with the reason rather than refused unseen)."""
    ae = AE(ae_title=settings.LUNGSITE_DICOM_AE_TITLE)
    ae.maximum_pdu_size = 0  # no limit: the peer's PDU size decides
    ae.add_supported_context(Verification)
    for sop_class in RADIOGRAPH_SOP_CLASSES:
        ae.add_supported_context(sop_class, ALL_TRANSFER_SYNTAXES)
    for context in AllStoragePresentationContexts:
        if context.abstract_syntax not in RADIOGRAPH_SOP_CLASSES:
            ae.add_supported_context(context.abstract_syntax)
    return ae


def listener_start(*, host: str, port: int, block: bool) -> ThreadedAssociationServer | None:
    """Starts serving C-ECHO and C-STORE on host:port. block=False returns the server (call
    .shutdown() to stop it)."""
    ae = application_entity()
    handlers = [(evt.EVT_C_STORE, handle_store)]
    logger.info("DICOM listener %s on %s:%s", settings.LUNGSITE_DICOM_AE_TITLE, host, port)
    return ae.start_server((host, port), block=block, evt_handlers=handlers)
