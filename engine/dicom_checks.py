"""Which DICOM images the models may read: frontal chest radiographs only. No Django here.

The decoder applies them to every DICOM the analysis core reads (engine.decode, in the bounded
child), and the PACS receivers (pacs.services) to skip an instance early with the same reason, so an
image is refused or skipped for the same reason whichever way it came."""

from __future__ import annotations

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


class UnreadableTag(ValueError):
    """A tag whose value is not text (e.g. Modality encoded as a number)."""


def _tag(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword)
    if value is None:
        return ""
    if isinstance(value, bytes):
        raise UnreadableTag(keyword)
    if not isinstance(value, str):  # a multi-valued element: its first value
        if not hasattr(value, "__len__") or isinstance(value, (int, float)):
            raise UnreadableTag(keyword)
        value = value[0] if len(value) else ""
        if not isinstance(value, str):
            raise UnreadableTag(keyword)
    return str(value).strip().upper()


def frontal_chest_refusal(ds: Dataset) -> str | None:
    """None when `ds` is a frontal chest radiograph (Modality CR or DX, BodyPartExamined CHEST or
    empty, ViewPosition PA, AP or empty); otherwise the reason in words, e.g.
    "lateral view: only frontal chest radiographs are analysed". Fails closed: a header whose
    modality, body part or view cannot be read as text is refused, never let through."""
    try:
        modality = _tag(ds, "Modality")
        body_part = _tag(ds, "BodyPartExamined")
        view = _tag(ds, "ViewPosition")
    except Exception as exc:  # noqa: BLE001 - any failure to read the tags means "cannot tell"
        keyword = exc.args[0] if isinstance(exc, UnreadableTag) else "view, body part or modality"
        return f"the {keyword} cannot be read from the header: {ONLY}, so it is not analysed"
    if modality not in RADIOGRAPH_MODALITIES:
        shown = modality or "missing"
        return f"modality {shown}: {ONLY} (CR or DX)"
    if body_part not in CHEST_BODY_PARTS:
        return f"body part {body_part}: {ONLY}"
    if view in LATERAL_VIEWS:
        return f"lateral view ({view}): {ONLY}"
    if view not in FRONTAL_VIEWS:
        return f"view position {view}: {ONLY} (PA or AP)"
    return None


def burned_in_refusal(ds: Dataset) -> str | None:
    """The reason to refuse a DICOM whose header says its pixels hold burned-in annotation (text
    such as names or dates in the image itself), or None. Such pixels are patient data: they are
    neither analysed nor stored. Fails closed: a value other than YES, NO or empty is refused too."""
    try:
        value = _tag(ds, "BurnedInAnnotation")
    except Exception:  # noqa: BLE001 - unreadable: cannot tell, so refuse
        value = "?"
    if value in ("", "NO"):
        return None
    said = "is YES" if value == "YES" else "cannot be read"
    return (
        f"its BurnedInAnnotation {said}: its pixels may hold text such as names or dates, which this "
        "service does not store or analyse; send an image without burned-in annotation"
    )
