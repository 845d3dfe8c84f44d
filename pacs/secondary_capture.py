"""A finding's heatmap for any viewer: a Secondary Capture (highdicom's SCImage) of the analysed
X-ray with the heat layer over it, and above them a band with the finding and the whole honesty
statement, wrapped to the width and legible at the image's size. It references the source image
and carries its Laterality (empty for the chest, which is not a paired structure)."""

from __future__ import annotations

import io
import textwrap

import highdicom as hd
import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydicom.dataset import Dataset

from pacs.honesty import honesty_statement
from pacs.models import ResultObject

MANUFACTURER = "lungsite"
SC_SERIES_NUMBER = 991
# Longest side of the picture: enough to read the X-ray under the layer, a few MB per object.
MAX_SIDE = 1024


def _xray(prediction) -> Image.Image:
    """The analysed image as the model saw it (the stored copy), 8-bit gray."""
    from audit.services import image_bytes

    data, _ = image_bytes(prediction=prediction)
    with Image.open(io.BytesIO(data)) as stored:
        pixels = np.asarray(stored)
    if pixels.dtype != np.uint8:
        pixels = np.round(pixels.astype(np.float32) / 257.0).astype(np.uint8)
    return Image.fromarray(pixels).convert("L")


def _band(width: int, lines_of_text: list[tuple[str, tuple[int, int, int]]]) -> Image.Image:
    size = max(14, width // 48)
    font = ImageFont.load_default(size=size)
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    char_width = max(1.0, probe.textlength("abcdefghijklmnopqrstuvwxyz", font=font) / 26)
    chars = max(20, int((width - 2 * size) / char_width))
    wrapped = [(line, colour) for text, colour in lines_of_text for line in textwrap.wrap(text, chars)]
    line_height = int(size * 1.3)
    band = Image.new("RGB", (width, line_height * len(wrapped) + size), (0, 0, 0))
    draw = ImageDraw.Draw(band)
    for number, (line, colour) in enumerate(wrapped):
        draw.text((size, size // 2 + number * line_height), line, fill=colour, font=font)
    return band


def overlay_pixels(prediction, finding: str, statement: str) -> np.ndarray:
    """(H, W, 3) uint8: the band (finding, statement) over the X-ray with the finding's heat layer."""
    from engine.heatmaps import case_scale, heat_layer

    xray = _xray(prediction)
    factor = min(1.0, MAX_SIDE / max(xray.size))
    size = (max(1, round(xray.width * factor)), max(1, round(xray.height * factor)))
    picture = xray.resize(size, Image.Resampling.LANCZOS).convert("RGBA")
    cams = prediction.heatmap_maps()
    scale = case_scale(cam for cam in cams.values() if isinstance(cam, list))
    layer = Image.fromarray(
        heat_layer(np.asarray(cams[finding], dtype=np.float32), size, scale=scale), "RGBA"
    )
    picture = Image.alpha_composite(picture, layer).convert("RGB")
    band = _band(size[0], [(f"lungsite heatmap: {finding}", (255, 255, 0)), (statement, (255, 255, 255))])
    canvas = Image.new("RGB", (size[0], band.height + size[1]), (0, 0, 0))
    canvas.paste(band, (0, 0))
    canvas.paste(picture, (0, band.height))
    return np.asarray(canvas, dtype=np.uint8)


def sc_dataset(*, result: ResultObject, source: Dataset) -> hd.sc.SCImage:
    """The secondary capture of one finding of a result row (its `finding`)."""
    prediction = result.received.prediction
    statement = honesty_statement(prediction)
    laterality = str(source.get("Laterality") or source.get("ImageLaterality") or "")
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=source,
        pixel_array=overlay_pixels(prediction, result.finding, statement),
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result.series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result.sop_instance_uid,
        instance_number=result.instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        laterality=laterality if laterality in ("R", "L") else None,
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    if laterality not in ("R", "L"):
        sc.Laterality = ""  # Type 2C, and the chest is not a paired structure
    sc.ReferencedImageSequence = hd.ReferencedImageSequence(referenced_images=[source])
    sc.SeriesDescription = (
        "lungsite heatmaps (UNTRAINED model)" if prediction.untrained else "lungsite heatmaps"
    )
    sc.ImageComments = f"Heatmap of {result.finding}. {statement}"[:10240]
    sc.DerivationDescription = f"X-ray with the Grad-CAM of finding {result.finding} over it"[:1024]
    sc.BurnedInAnnotation = "YES"  # the finding and the model statement, no patient data
    sc.SoftwareVersions = prediction.recorded_model["version_name"][:64]
    return sc
