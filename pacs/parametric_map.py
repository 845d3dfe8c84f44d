"""A finding's heatmap as a DICOM Parametric Map (highdicom's ParametricMap): the Grad-CAM map at
the analysed image's size, one float32 value per image pixel, with its real world value mapping,
referencing the source image (Derivation Image Sequence, Spatial Locations Preserved YES).

A projection radiograph has no patient coordinate system, but the Parametric Map IOD requires a
Frame of Reference and plane geometry. The map therefore declares a frame of reference of its own
(a UID fixed by the source's SOP Instance UID), on the source's pixel grid: one map pixel per image
pixel, the source's pixel spacing where it has a valid one (else 1 mm), origin at the first pixel.
That geometry relates the map to the source image only, which the reference states.
"""

from __future__ import annotations

import copy

import highdicom as hd
import numpy as np
from highdicom.pm import ParametricMap, RealWorldValueMapping
from PIL import Image
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from engine.heatmaps import case_scale
from pacs import coding
from pacs.honesty import honesty_statement
from pacs.models import ResultObject

MANUFACTURER = "lungsite"
PM_SERIES_NUMBER = 992


def heat_values(cams: dict, finding: str, size: tuple[int, int]) -> np.ndarray:
    """(H, W) float32 in [0, 1] at `size` = (W, H): the finding's raw map upsampled bicubically (as
    the page's heat layer is) and divided by the case scale (the largest value over all the
    prediction's maps), so maps of one case compare."""
    scale = case_scale(cam for cam in cams.values() if isinstance(cam, list))
    cam = np.maximum(np.asarray(cams[finding], dtype=np.float32), 0)
    if scale <= 0:
        return np.zeros((size[1], size[0]), dtype=np.float32)
    upsampled = Image.fromarray(np.ascontiguousarray(cam / np.float32(scale))).resize(
        size, Image.Resampling.BICUBIC
    )
    return np.clip(np.asarray(upsampled, dtype=np.float32), 0.0, 1.0)


def _spacing(source: Dataset) -> list[float]:
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = source.get(keyword)
        try:
            spacing = [float(v) for v in value]
        except (TypeError, ValueError):
            continue
        if len(spacing) == 2 and all(s > 0 for s in spacing):
            return spacing
    return [1.0, 1.0]


def _with_frame_of_reference(source: Dataset) -> Dataset:
    """`source` (a copy) with the map's own plane geometry when it has none (see the module)."""
    if "FrameOfReferenceUID" in source and "ImagePositionPatient" in source:
        return source
    source = copy.copy(source)
    source.FrameOfReferenceUID = generate_uid(entropy_srcs=[source.SOPInstanceUID, "lungsite-map-frame"])
    source.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    source.ImagePositionPatient = [0.0, 0.0, 0.0]
    source.PixelSpacing = _spacing(source)
    source.SliceThickness = 1.0
    return source


def parametric_map_dataset(*, result: ResultObject, source: Dataset) -> ParametricMap:
    """The Parametric Map of one finding of a result row (its `finding`)."""
    prediction = result.received.prediction
    recorded = prediction.recorded_model
    values = heat_values(prediction.heatmap_maps(), result.finding, (int(source.Columns), int(source.Rows)))
    mapping = RealWorldValueMapping(
        lut_label="GRADCAM",
        lut_explanation=f"Grad-CAM of {result.finding}, relative to the case maximum"[:64],
        unit=coding.NO_UNITS,
        value_range=(0.0, 1.0),
        slope=1.0,
        intercept=0.0,
        quantity_definition=coding.HEATMAP,
    )
    pm = ParametricMap(
        source_images=[_with_frame_of_reference(source)],
        pixel_array=values,
        series_instance_uid=result.series_instance_uid,
        series_number=PM_SERIES_NUMBER,
        sop_instance_uid=result.sop_instance_uid,
        instance_number=result.instance_number,
        manufacturer=MANUFACTURER,
        manufacturer_model_name="lungsite",
        software_versions=recorded["version_name"][:64],
        device_serial_number=recorded["sha256"][:64],
        contains_recognizable_visual_features=False,
        real_world_value_mappings=[mapping],
        voi_lut_transformations=[hd.VOILUTTransformation(window_center=0.5, window_width=1.0)],
        content_label="HEATMAP",
        content_description=f"Grad-CAM {result.finding}"[:64],
    )
    pm.SeriesDescription = (
        "lungsite heatmaps (UNTRAINED model)" if prediction.untrained else "lungsite heatmaps"
    )
    # The honesty statement travels with the map, where a viewer shows image comments.
    pm.ImageComments = f"Heatmap of {result.finding}. {honesty_statement(prediction)}"[:10240]
    pm.Laterality = ""  # General Series, Type 2C: the chest is not a paired structure
    return pm
