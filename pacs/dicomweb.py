"""The DICOMweb client of the configured PACS (LUNGSITE_DICOMWEB_URL), through `dicomweb-client`:
the source instance's header by WADO-RS (metadata), and result objects out by STOW-RS. The outbox
(pacs.services) retries; the client itself does not."""

from __future__ import annotations

import warnings

import requests
from dicomweb_client import DICOMwebClient
from django.conf import settings
from pydicom import Dataset

# PS3.18 10.5.3: an item of the STOW-RS response's Failed SOP Sequence.
FAILURE_REASON = "FailureReason"


class DicomwebError(Exception):
    """The PACS did not take a request. `retryable`: the PACS is down, slow or overloaded (try
    again later) rather than refusing this request for good."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def _retryable(status: int) -> bool:
    return status >= 500 or status in (401, 403, 404, 408, 429)


def client() -> DICOMwebClient:
    if not settings.LUNGSITE_DICOMWEB_URL:
        raise DicomwebError("LUNGSITE_DICOMWEB_URL is not set: results wait until it is.", retryable=True)
    session = requests.Session()
    session.trust_env = False  # the PACS is reached directly, never through a proxy from the environment
    if settings.LUNGSITE_DICOMWEB_USER:
        session.auth = (settings.LUNGSITE_DICOMWEB_USER, settings.LUNGSITE_DICOMWEB_PASSWORD)
    elif settings.LUNGSITE_DICOMWEB_TOKEN:
        session.headers["Authorization"] = f"Bearer {settings.LUNGSITE_DICOMWEB_TOKEN}"
    web = DICOMwebClient(
        url=settings.LUNGSITE_DICOMWEB_URL, session=session, timeout=settings.LUNGSITE_DICOMWEB_TIMEOUT
    )
    web.set_http_retry_params(retry=False)  # the outbox retries, with its own backoff
    return web


def _error(exc: requests.RequestException, what: str) -> DicomwebError:
    response = getattr(exc, "response", None)
    if response is None:
        return DicomwebError(f"The PACS cannot be reached ({type(exc).__name__}).", retryable=True)
    return DicomwebError(
        f"The PACS answered {response.status_code} to {what}.", retryable=_retryable(response.status_code)
    )


def instance_header(*, study: str, series: str, sop: str) -> Dataset:
    """The source instance's attributes, without bulk data, from the PACS (WADO-RS metadata). The
    caller copies the patient and study modules from it into the results, in memory."""
    try:
        metadata = client().retrieve_instance_metadata(study, series, sop)
    except requests.RequestException as exc:
        error = _error(exc, "the source instance's metadata (WADO-RS)")
        message = f"{error} The results are sent once it has the study."
        raise DicomwebError(message, retryable=error.retryable) from exc
    except (ValueError, IndexError, KeyError, TypeError) as exc:
        raise DicomwebError(f"The PACS's metadata answer is not DICOM JSON ({exc}).", retryable=True) from exc
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bulk data URIs are left out, on purpose
            return Dataset.from_json(metadata, bulk_data_uri_handler=lambda *args: b"")
    except (ValueError, KeyError, TypeError) as exc:
        raise DicomwebError(f"The PACS's metadata answer is not DICOM JSON ({exc}).", retryable=True) from exc


def stow(*, dataset: Dataset, study: str) -> None:
    """Stores one DICOM object in the PACS (STOW-RS, into its study). Raises DicomwebError when the
    PACS does not answer 200, or answers with the object in its Failed SOP Sequence."""
    try:
        answer = client().store_instances(datasets=[dataset], study_instance_uid=study)
    except requests.RequestException as exc:
        raise _error(exc, "STOW-RS") from exc
    failed = answer.get("FailedSOPSequence") or []
    if failed:
        reasons = ", ".join(f"0x{int(item.get(FAILURE_REASON, 0)):04X}" for item in failed)
        raise DicomwebError(
            f"The PACS refused the object (STOW-RS failure reason {reasons}).", retryable=False
        )
