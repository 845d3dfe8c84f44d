"""No patient data in any log line: the values of the header in hand are redacted from every log
record made while it is in hand, whichever library makes the record.

`patient_data(header)` marks the patient's values (person names and their components, IDs, dates
of birth, accession numbers, addresses, ...) for the code that runs inside it, in this thread or
task (a context variable). `PatientDataFilter` replaces those values with "[redacted]" in a record's
message, arguments and exception text; `install()` applies it to every record the process creates
(a logging record factory, so Django's, Celery's and any other handler see the redacted record).
Warnings raised inside `patient_data` (highdicom and pydicom quote names and values in theirs) are
turned into log records there, so they are redacted too instead of reaching stderr as they are.
Records of the DICOM libraries made outside any such block have their quoted values redacted.

Python's warning filters are process-wide: `patient_data` is meant for the Celery worker and the
delivery command, where one object is built at a time, as lungsite deploys them.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import re
import traceback
import warnings
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue

REDACTED = "[redacted]"
logger = logging.getLogger("pacs.phi")

# Attributes that identify a patient (besides every PN value, which is always taken): the Patient
# module and its identification macros, the visit, the request, and the study's identifiers.
IDENTIFYING_KEYWORDS = (
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientMotherBirthName",
    "MedicalRecordLocator",
    "AccessionNumber",
    "StudyID",
    "RequestedProcedureID",
    "AdmissionID",
    "InstitutionName",
    "InstitutionAddress",
    "StudyDescription",
)
# Shorter values (sex "M", a one-letter initial) say nothing on their own and would blank out
# ordinary words.
MIN_LENGTH = 3
_LIBRARIES = ("highdicom", "pydicom", "pynetdicom", "dicomweb_client")
_QUOTED = re.compile(r"""(["'])(?:(?!\1).){1,200}\1""")

_values: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar("pacs_phi_values", default=())


def _strings(value) -> Iterator[str]:
    values = value if isinstance(value, (list, tuple, MultiValue)) else [value]
    for item in values:
        text = "" if item is None else str(item).strip()
        if text:
            yield text


def _element_strings(element) -> Iterator[str]:
    if element.VR == "SQ":  # e.g. Other Patient IDs Sequence, Request Attributes Sequence
        for item in element.value or []:
            for child in item:
                yield from _element_strings(child)
        return
    if element.VR == "PN":
        for name in element.value if element.VM > 1 else [element.value]:
            if not name:
                continue
            yield str(name)
            # A viewer or a library may print the name with spaces or components on their own.
            yield from (part for part in re.split(r"[\^=]", str(name)) if part)
            yield " ".join(part for part in str(name).split("^") if part)
        return
    if element.keyword in IDENTIFYING_KEYWORDS:
        yield from _strings(element.value)


def patient_values(header: Dataset) -> tuple[str, ...]:
    """The strings of `header` that identify the patient, longest first."""
    found = set()
    for element in header:
        for text in _element_strings(element):
            if len(text) >= MIN_LENGTH:
                found.add(text)
    return tuple(sorted(found, key=len, reverse=True))


def redact(text: str, values: tuple[str, ...] | None = None) -> str:
    """`text` with the values in hand (or `values`) replaced by REDACTED."""
    for value in _values.get() if values is None else values:
        if value in text:
            text = text.replace(value, REDACTED)
    return text


@contextlib.contextmanager
def patient_values_in_hand(values: tuple[str, ...]) -> Iterator[None]:
    """Marks `values` (patient_values of a header) for redaction while the block runs."""
    token = _values.set(_values.get() + tuple(values))
    try:
        yield
    finally:
        _values.reset(token)


@contextlib.contextmanager
def patient_data(header: Dataset) -> Iterator[None]:
    """Marks the patient values of `header` for redaction while the block runs, and logs the
    warnings raised in it through `logging` (redacted) instead of printing them."""
    with patient_values_in_hand(patient_values(header)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
        for warning in caught:
            logger.warning("%s: %s", warning.category.__name__, warning.message)


class PatientDataFilter(logging.Filter):
    """Redacts the patient values in hand from a record (message, arguments, exception text);
    outside `patient_data`, redacts quoted values in the records of the DICOM libraries."""

    def filter(self, record: logging.LogRecord) -> bool:
        values = _values.get()
        library = record.name.split(".")[0] in _LIBRARIES or (
            record.name == "py.warnings" and any(f"/{name}/" in str(record.msg) for name in _LIBRARIES)
        )
        if not values and not library:
            return True
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a record whose arguments do not fit its format
            message = str(record.msg)
        message = redact(message, values)
        if library and not values:
            message = _QUOTED.sub(lambda m: m.group(1) + REDACTED + m.group(1), message)
        record.msg, record.args = message, None
        if record.exc_info and record.exc_info[0] is not None:
            text = "".join(traceback.format_exception(*record.exc_info)).rstrip("\n")
            record.exc_text = redact(text, values)
            record.exc_info = None
        if record.stack_info:
            record.stack_info = redact(record.stack_info, values)
        return True


_installed = False


def install() -> None:
    """Applies PatientDataFilter to every log record this process creates (idempotent)."""
    global _installed
    if _installed:
        return
    previous = logging.getLogRecordFactory()
    patient_filter = PatientDataFilter()

    def factory(*args, **kwargs) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        patient_filter.filter(record)
        return record

    logging.setLogRecordFactory(factory)
    _installed = True
