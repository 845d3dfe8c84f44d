"""The DICOMweb client of the configured PACS (LUNGSITE_DICOMWEB_URL): the source instance's header
by WADO-RS (metadata), and result objects out by STOW-RS. Plain `requests`."""

from __future__ import annotations

import uuid
import warnings

import requests
from django.conf import settings
from pydicom.dataset import Dataset

# PS3.18: the STOW-RS response's Failed SOP Sequence and each item's Failure Reason.
FAILED_SOP_SEQUENCE = "00081198"
FAILURE_REASON = "00081197"


class DicomwebError(Exception):
    """The PACS did not take a request. `retryable`: the PACS is down, slow or overloaded (try
    again later) rather than refusing this request for good."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _base_url() -> str:
    if not settings.LUNGSITE_DICOMWEB_URL:
        raise DicomwebError("LUNGSITE_DICOMWEB_URL is not set: results wait until it is.", retryable=True)
    return settings.LUNGSITE_DICOMWEB_URL


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # the PACS is reached directly, never through a proxy from the environment
    if settings.LUNGSITE_DICOMWEB_USER:
        session.auth = (settings.LUNGSITE_DICOMWEB_USER, settings.LUNGSITE_DICOMWEB_PASSWORD)
    elif settings.LUNGSITE_DICOMWEB_TOKEN:
        session.headers["Authorization"] = f"Bearer {settings.LUNGSITE_DICOMWEB_TOKEN}"
    return session


def _retryable(status: int) -> bool:
    return status >= 500 or status in (401, 403, 404, 408, 429)


def _request(method: str, url: str, **kwargs) -> requests.Response:
    try:
        with _session() as session:
            response = session.request(method, url, timeout=settings.LUNGSITE_DICOMWEB_TIMEOUT, **kwargs)
    except requests.RequestException as exc:
        raise DicomwebError(f"The PACS cannot be reached ({type(exc).__name__}).", retryable=True) from exc
    return response


def instance_header(*, study: str, series: str, sop: str) -> Dataset:
    """The source instance's attributes, without bulk data, from the PACS (WADO-RS metadata). The
    caller copies the patient and study modules from it into the results, in memory."""
    url = f"{_base_url()}/studies/{study}/series/{series}/instances/{sop}/metadata"
    response = _request("GET", url, headers={"Accept": "application/dicom+json"})
    if response.status_code != 200:
        raise DicomwebError(
            f"The PACS answered {response.status_code} for the source instance's metadata "
            "(WADO-RS); the results are sent once it has the study.",
            retryable=_retryable(response.status_code),
        )
    try:
        items = response.json()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bulk data URIs are left out, on purpose
            return Dataset.from_json(items[0], bulk_data_uri_handler=lambda *args: b"")
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise DicomwebError(f"The PACS's metadata answer is not DICOM JSON ({exc}).", retryable=True) from exc


def stow(*, data: bytes, study: str) -> None:
    """Stores one DICOM Part 10 object in the PACS (STOW-RS, into its study). Raises DicomwebError
    when the PACS does not answer 200, or answers with the object in its Failed SOP Sequence."""
    boundary = uuid.uuid4().hex
    body = (
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    content_type = f'multipart/related; type="application/dicom"; boundary={boundary}'
    response = _request(
        "POST",
        f"{_base_url()}/studies/{study}",
        data=body,
        headers={"Content-Type": content_type, "Accept": "application/dicom+json"},
    )
    failed = None
    if response.content:
        try:
            # Orthanc names the sequence even when it is empty.
            failed = ((response.json() or {}).get(FAILED_SOP_SEQUENCE) or {}).get("Value")
        except (ValueError, AttributeError):
            failed = None
    if response.status_code == 200 and not failed:
        return
    reason = ""
    if failed:
        values = [item.get(FAILURE_REASON, {}).get("Value", [None])[0] for item in failed]
        reason = f", failure reason {', '.join(f'0x{v:04X}' for v in values if isinstance(v, int))}"
    raise DicomwebError(
        f"The PACS answered {response.status_code} to STOW-RS{reason}.",
        retryable=_retryable(response.status_code) or response.status_code == 202 and not failed,
    )
