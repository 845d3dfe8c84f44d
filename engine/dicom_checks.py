"""Which DICOM images the models may read: frontal chest radiographs only. No Django here.

Used by the upload page and API (analysis.services) and by the PACS receivers (pacs.services), so
an image is refused or skipped for the same reason whichever way it came."""

from __future__ import annotations

import io
import warnings
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pydicom loads with the first DICOM upload, not with the module
    from pydicom.dataset import Dataset

RADIOGRAPH_MODALITIES = ("CR", "DX")
# Empty is allowed: many DX headers leave body part and view out, and the check would otherwise
# refuse most frontal chest films from older modalities.
CHEST_BODY_PARTS = ("CHEST", "")
FRONTAL_VIEWS = ("PA", "AP", "")
LATERAL_VIEWS = ("LL", "RL", "LAT", "LATERAL", "LLD", "RLD")
ONLY = "only frontal chest radiographs are analysed"


def _tag(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if not isinstance(value, str):  # a multi-valued element: its first value
        value = value[0] if len(value) else ""
    return str(value).strip().upper()


def frontal_chest_refusal(ds: Dataset) -> str | None:
    """None when `ds` is a frontal chest radiograph (Modality CR or DX, BodyPartExamined CHEST or
    empty, ViewPosition PA, AP or empty); otherwise the reason in words, e.g.
    "lateral view: only frontal chest radiographs are analysed"."""
    modality = _tag(ds, "Modality")
    if modality not in RADIOGRAPH_MODALITIES:
        shown = modality or "missing"
        return f"modality {shown}: {ONLY} (CR or DX)"
    body_part = _tag(ds, "BodyPartExamined")
    if body_part not in CHEST_BODY_PARTS:
        return f"body part {body_part}: {ONLY}"
    view = _tag(ds, "ViewPosition")
    if view in LATERAL_VIEWS:
        return f"lateral view ({view}): {ONLY}"
    if view not in FRONTAL_VIEWS:
        return f"view position {view}: {ONLY} (PA or AP)"
    return None


def is_dicom(data: bytes) -> bool:
    """DICOM Part 10 bytes (the "DICM" marker after the preamble) or a headerless ACR-NEMA style
    dataset, recognised as engine.pipeline recognises them."""
    if len(data) >= 132 and data[128:132] == b"DICM":
        return True
    return len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[3:4] == b"\x00"


def dicom_upload_refusal(data: bytes) -> str | None:
    """The frontal-chest check on uploaded bytes: None for non-DICOM uploads (PNG and JPEG carry no
    such tags) and for frontal chest DICOM; the reason otherwise. The header is read without its
    pixels; a header pydicom cannot read is left to the decoder, which names the problem."""
    if not is_dicom(data):
        return None
    import pydicom

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True, stop_before_pixels=True)
            return frontal_chest_refusal(ds)
    except Exception:  # noqa: BLE001 - hostile headers make pydicom raise anything; decode reports it
        return None
