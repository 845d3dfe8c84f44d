"""The source's header as the result objects inherit it: the values a result copies (patient, study,
the image's UIDs and geometry), each checked against its VR, repaired where the repair is certain
and left out where it is not. The PACS is the system of record; a value it accepted but the
standard does not (PatientAge "62", a birth date of February 31st, a date written 1995.07.20, an ID
padded with NUL) must not make every result lungsite sends invalid or unbuildable.

In memory only: the header is read from the PACS when a result is sent (docs/pacs.md).
"""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.valuerep import DA, DT, TM, PersonName, validate_value

# Type 2 attributes of the patient and study modules: present in every result, empty where the
# source had none (or had an invalid value).
TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
)
# Strings padded with characters their VR does not allow: trimmed (the value is otherwise kept).
_PADDED_VRS = {"AE", "AS", "CS", "DA", "DS", "DT", "IS", "LO", "PN", "SH", "TM", "UI"}
_TEMPORAL = {"DA": DA, "DT": DT, "TM": TM}
RAISE = 2  # pydicom.config.RAISE: validate_value raises ValueError on an invalid value


def _valid(vr: str, value) -> bool:
    values = list(value) if isinstance(value, (list, tuple, MultiValue)) else [value]
    for item in values:
        if item is None or item == "":
            continue
        try:
            validate_value(vr, item, RAISE)
            if vr in _TEMPORAL and isinstance(item, str):
                _TEMPORAL[vr](item)  # parses the date: catches days and months that do not exist
        except (ValueError, TypeError, OverflowError):
            return False
    return True


def _trimmed(vr: str, value):
    if vr not in _PADDED_VRS:
        return value
    if isinstance(value, (list, tuple, MultiValue)):
        return [_trimmed(vr, item) for item in value]
    if isinstance(value, (str, PersonName)):
        return str(value).strip(" \x00")
    return value


def inherited_header(header: Dataset) -> Dataset:
    """A copy of `header` without pixel data, private or invalid elements, with string values
    trimmed of padding and the type 2 patient/study attributes present (empty when unknown)."""
    clean = Dataset()
    for element in header:
        if element.tag.is_private or element.keyword in ("PixelData", "") or element.tag.group == 0x0002:
            continue
        if element.VR == "SQ":
            clean.add(element)  # copied as the PACS holds them; no result inherits a sequence's values
            continue
        try:
            value = _trimmed(element.VR, element.value)
        except Exception:  # noqa: BLE001 - a value pydicom read but cannot convert
            continue
        if element.keyword == "PatientAge" and isinstance(value, str) and value.isdigit():
            value = ""  # "62": years or days? not certain, so left out (Type 3)
        if not _valid(element.VR, value):
            if element.keyword in TYPE2:
                setattr(clean, element.keyword, "")
            continue
        if value in ("", None) and element.keyword not in TYPE2:
            continue
        setattr(clean, element.keyword, value)
    for keyword in TYPE2:
        if keyword not in clean:
            setattr(clean, keyword, "")
    return clean
