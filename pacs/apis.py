"""DICOMweb STOW-RS in: `POST /dicom-web/studies` (multipart/related; type="application/dicom"),
token-authenticated. Each part goes to pacs.services.instance_receive; the answer is the STOW-RS
response of PS3.18 10.5.3 (Referenced SOP Sequence, Failed SOP Sequence) as DICOM JSON."""

from __future__ import annotations

import email.parser
import email.policy

from django.conf import settings
from django.http import HttpResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import NotFound, ParseError, UnsupportedMediaType
from rest_framework.permissions import BasePermission, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.response import Response
from rest_framework.views import APIView

from audit import selectors as audit_selectors
from audit.models import Prediction
from common.api_errors import PayloadTooLarge, error_responses
from common.errors import Refused
from pacs.models import ReceivedInstance

# Failure reasons (PS3.18 Table 10.5.3-1 / PS3.4 Annex B): A700 out of resources (the sender
# should try again); the others come with the refusal (pacs.services.InstanceRefused.status).
OUT_OF_RESOURCES = 0xA700


def _body(request) -> bytes:
    """The request body, at most DATA_UPLOAD_MAX_MEMORY_SIZE. A chunked body (Orthanc's default,
    curl with Transfer-Encoding: chunked) has no Content-Length: the WSGI server de-chunks it and
    says so with `wsgi.input_terminated` (gunicorn does); a server that does not would hand over
    an empty body, so that is refused (411) rather than answered as if nothing had been sent."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    meta = request.META
    if "chunked" in meta.get("HTTP_TRANSFER_ENCODING", "").lower():
        if not meta.get("wsgi.input_terminated"):
            raise Refused(
                "This server cannot read a chunked request body: send it with a Content-Length, or "
                "serve lungsite with gunicorn (docs/pacs.md).",
                code="length_required",
                status=status.HTTP_411_LENGTH_REQUIRED,
            )
        stream = meta["wsgi.input"]
    else:
        stream = request.stream  # the body up to its Content-Length; None when there is none
    body = stream.read(limit + 1) if stream is not None else b""
    if len(body) > limit:
        raise PayloadTooLarge(
            f"The body is larger than {limit // 1048576} MB: send the study in several requests."
        )
    return body


def dicom_parts(body: bytes, content_type: str) -> list[bytes]:
    """multipart/related body -> its application/dicom parts (bytes), at most
    LUNGSITE_STOW_MAX_PARTS. The email package splits MIME bodies byte-exactly."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise ParseError("The body is not multipart/related with a boundary.")
    parts = [part for part in message.iter_parts() if part.get_content_type() == "application/dicom"]
    if not parts:
        raise ParseError('The body holds no application/dicom part (only type="application/dicom" is read).')
    limit = settings.LUNGSITE_STOW_MAX_PARTS
    if len(parts) > limit:
        raise Refused(
            f"The body holds {len(parts)} instances; at most {limit} are taken per request: send the "
            "study in several requests. Nothing was recorded.",
            code="too_many_parts",
            status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
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
    none was; skipped images (not frontal chest radiographs, instances already analysed) were
    taken and are recorded. A body with no instance, or more than LUNGSITE_STOW_MAX_PARTS, is
    refused whole (400, 413) with nothing recorded."""

    # The body is read and split here (_body, dicom_parts), not by a DRF parser: DRF reads no
    # chunked bodies, and the part limit is checked before any instance is recorded.
    parser_classes = []
    renderer_classes = [DicomJsonRenderer, JSONRenderer]
    permission_classes = [CanSendStudies]

    # Specified by DICOM PS3.18 (STOW-RS), not part of lungsite's REST API and its OpenAPI schema.
    @extend_schema(exclude=True)
    def post(self, request, study_uid: str | None = None):
        from pacs.services import InstanceRefused, QueueUnavailable, instance_receive

        if not request.content_type.startswith("multipart/related"):
            raise UnsupportedMediaType(request.content_type)
        parts = dicom_parts(_body(request), request.content_type)
        stored, failed = [], []
        for data in parts:
            try:
                received = instance_receive(dataset_bytes=data, source=ReceivedInstance.SOURCE_STOW)
            except InstanceRefused as exc:
                failed.append(_reference(exc.received, exc.status))
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


class FhirRenderer(JSONRenderer):
    media_type = "application/fhir+json"
    format = "fhir"


class PredictionFhirApi(APIView):
    """GET a prediction as FHIR R4: a Bundle of its DiagnosticReport, Observations and Device."""

    permission_classes = [IsAuthenticated]
    renderer_classes = [FhirRenderer, JSONRenderer]

    @extend_schema(
        operation_id="predictions_fhir_retrieve",
        summary="A prediction as FHIR R4",
        description=(
            "A FHIR R4 Bundle (type collection): one DiagnosticReport (status preliminary), one "
            "Observation per finding (coded in SNOMED CT where reviewed, the probability as a "
            "Quantity, interpretation POS/NEG, the threshold as the reference range) and the Device "
            "(lungsite, the model version and its sha256). Visible to the prediction's owner, "
            "auditors and superusers."
        ),
        responses={200: OpenApiTypes.OBJECT, **error_responses(401, 403, 404)},
        tags=["predictions"],
    )
    def get(self, request, pk: int):
        from pacs.fhir import prediction_fhir_json

        try:
            prediction = audit_selectors.prediction_get_for(user=request.user, pk=pk)
        except Prediction.DoesNotExist:
            raise NotFound(f"Prediction {pk} not found.") from None
        return HttpResponse(prediction_fhir_json(prediction), content_type=FhirRenderer.media_type)
