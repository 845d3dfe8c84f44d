"""What kind of input an analysed image was, without patient data: container format, DICOM
modality and manufacturer, size and depth. Recorded with each result so that the drift page can
show the mix of inputs changing over time. No Django here.

Only called on bytes that the bounded decoder has already read (engine.decode_pool), and a DICOM
header is read up to its pixels, the two tags asked for only."""

from __future__ import annotations

import io

import numpy as np

_PNG = b"\x89PNG\r\n\x1a\n"
_JPEG = b"\xff\xd8\xff"


def _dicom_tags(data: bytes) -> dict:
    import pydicom

    try:
        ds = pydicom.dcmread(
            io.BytesIO(data), stop_before_pixels=True, force=True, specific_tags=["Modality", "Manufacturer"]
        )
        modality = str(ds.get("Modality", "") or "").strip().upper()[:16]
        manufacturer = str(ds.get("Manufacturer", "") or "").strip()[:64]
    except Exception:  # noqa: BLE001 - a fact we could not read is recorded as unknown
        return {"modality": "", "manufacturer": ""}
    return {"modality": modality, "manufacturer": manufacturer}


def input_facts(data: bytes, image: np.ndarray) -> dict:
    """{"format": "DICOM" | "PNG" | "JPEG" | "other", "modality", "manufacturer", "rows", "cols",
    "bits": 8 or 16} of an upload `data` that decoded to `image` ((H, W); uint8 when 8-bit)."""
    is_dicom = (len(data) >= 132 and data[128:132] == b"DICM") or (
        len(data) >= 8 and data[:2] in (b"\x08\x00", b"\x02\x00") and data[3:4] == b"\x00"
    )
    facts = {"format": "other", "modality": "", "manufacturer": ""}
    if is_dicom:
        facts = {"format": "DICOM", **_dicom_tags(data)}
    elif data.startswith(_PNG):
        facts["format"] = "PNG"
    elif data.startswith(_JPEG):
        facts["format"] = "JPEG"
    rows, cols = (int(v) for v in image.shape[:2])
    return {**facts, "rows": rows, "cols": cols, "bits": 8 if image.dtype == np.uint8 else 16}
