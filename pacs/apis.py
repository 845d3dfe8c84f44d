"""DICOMweb STOW-RS in: `POST /dicom-web/studies` (multipart/related; type="application/dicom"),
token-authenticated. Each part goes to pacs.services.instance_receive; the answer is the STOW-RS
response of PS3.18 10.5.3 (Referenced SOP Sequence, Failed SOP Sequence) as DICOM JSON."""

from __future__ import annotations

import email.parser
import email.policy

from django.conf import settings
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser
from rest_framework.permissions import BasePermission
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api_errors import PayloadTooLarge
from pacs.models import ReceivedInstance

# Failure reasons (PS3.18 Table 10.5.3-1 / PS3.4 Annex B): C000 cannot understand, A700 out of
# resources (the sender should try again).
CANNOT_UNDERSTAND = 0xC000
OUT_OF_RESOURCES = 0xA700


class MultipartRelatedParser(BaseParser):
    """multipart/related bodies -> the list of their application/dicom parts (bytes). The email
    package splits MIME bodies byte-exactly (binary parts included)."""

    media_type = "multipart/related"

    def parse(self, stream, media_type=None, parser_context=None) -> list[bytes]:
        # DRF reads the stream itself, past Django's DATA_UPLOAD_MAX_MEMORY_SIZE check: bound it here.
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        body = stream.read(limit + 1) if stream is not None else b""
        if len(body) > limit:
            raise PayloadTooLarge(
                f"The body is larger than {limit // 1048576} MB: send the study in several requests."
            )
        head = f"Content-Type: {media_type}\r\n\r\n".encode("latin-1")
        message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
        if not message.is_multipart():
            raise ParseError("The body is not multipart/related with a boundary.")
        parts = [part for part in message.iter_parts() if part.get_content_type() == "application/dicom"]
        if not parts:
            raise ParseError(
                'The body holds no application/dicom part (only type="application/dicom" is read).'
            )
        return [part.get_payload(decode=True) or b"" for part in parts]


class DicomJsonRenderer(JSONRenderer):
    media_type = "application/dicom+json"


class CanSendStudies(BasePermission):
    """The token's user may send studies (permission pacs.add_receivedinstance, e.g. a "pacs"
    service user; superusers have it)."""

    message = "This account may not send studies (it needs the pacs.add_receivedinstance permission)."

    def has_permission(self, request, view) -> bool:
        return bool(request.user and request.user.has_perm("pacs.add_receivedinstance"))


def _element(vr: str, *values) -> dict:
    return {"vr": vr, "Value": list(values)}


def _reference(received: ReceivedInstance, reason: int | None = None) -> dict:
    item = {}
    if received.sop_class_uid:
        item["00081150"] = _element("UI", received.sop_class_uid)
    if received.sop_instance_uid:
        item["00081155"] = _element("UI", received.sop_instance_uid)
    if reason is not None:
        item["00081197"] = _element("US", reason)
    return item


class StudiesStoreApi(APIView):
    """STOW-RS: store instances. 200 when all were taken, 202 when some were refused, 409 when
    none was; skipped images (not frontal chest radiographs) were taken and are recorded."""

    parser_classes = [MultipartRelatedParser]
    renderer_classes = [DicomJsonRenderer, JSONRenderer]
    permission_classes = [CanSendStudies]

    # Specified by DICOM PS3.18 (STOW-RS), not part of lungsite's REST API and its OpenAPI schema.
    @extend_schema(exclude=True)
    def post(self, request, study_uid: str | None = None):
        from pacs.services import InstanceRefused, QueueUnavailable, instance_receive

        stored, failed = [], []
        for data in request.data:
            try:
                received = instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_STOW)
            except InstanceRefused as exc:
                failed.append(_reference(exc.received, CANNOT_UNDERSTAND))
                continue
            except QueueUnavailable:
                failed.append({"00081197": _element("US", OUT_OF_RESOURCES)})
                continue
            stored.append(_reference(received))
        body = {}
        if stored:
            body["00081199"] = {"vr": "SQ", "Value": stored}
        if failed:
            body["00081198"] = {"vr": "SQ", "Value": failed}
        code = (
            status.HTTP_200_OK
            if not failed
            else (status.HTTP_202_ACCEPTED if stored else status.HTTP_409_CONFLICT)
        )
        return Response(body, status=code)
