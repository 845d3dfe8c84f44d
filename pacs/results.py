"""Results as DICOM, built with highdicom from the audit row: a Comprehensive SR with every
finding's probability, threshold and positive mark, and a secondary capture of the heatmap overlay
of each positive finding. Both join the source study (its StudyInstanceUID and patient module,
copied from `header`, which the caller holds in memory only)."""

from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
from highdicom.sr import CodedConcept
from PIL import Image, ImageDraw
from pydicom import dcmwrite
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes

from audit.models import Prediction
from pacs.models import ResultObject

MANUFACTURER = "lungsite"
# Series numbers of the results in the source study (high, so they sort after the acquisitions).
SR_SERIES_NUMBER = 990
SC_SERIES_NUMBER = 991
# Concepts no standard code names are coded in a private scheme ("99" prefix, PS3.16 8.2).
SCHEME = "99LUNGSITE"
REPORT_TITLE = CodedConcept("18748-4", "LN", "Diagnostic imaging report")
PROBABILITY = CodedConcept("probability", SCHEME, "Probability")
THRESHOLD = CodedConcept("threshold", SCHEME, "Decision threshold")
POSITIVE = CodedConcept("positive", SCHEME, "Positive at threshold")
FINDING_NAME = CodedConcept("finding-name", SCHEME, "Finding name")
MODEL_STATEMENT = CodedConcept("model-statement", SCHEME, "Model statement")
NO_UNITS = CodedConcept("1", "UCUM", "no units")


def model_statement(prediction: Prediction) -> str:
    """What the reader must know about the model before reading the numbers: the honesty statement
    recorded with the result (untrained, not evaluated, not validated, outside what the version was
    evaluated on), else the figures of the evaluation that was in force when it was made."""
    from registry.models import Evaluation

    recorded = prediction.recorded_model
    name = recorded["version_name"]
    honesty = prediction.honesty
    if honesty["state"] == "untrained":
        statement = (
            f"UNTRAINED MODEL: version {name} has random weights; its outputs carry no medical "
            "meaning. Not for diagnosis."
        )
        return f"{statement} {honesty['statement']}" if honesty.get("outside") else statement
    if honesty.get("statement"):
        return f"{honesty['statement']} (Version {name}.) Not for diagnosis."
    evaluation = Evaluation.objects.filter(pk=honesty.get("evaluation_id")).first()
    if evaluation is None or evaluation.mean_auroc is None:
        return f"Model version {name}, evaluated on held-out images. Not a medical device."
    ci = evaluation.mean_auroc_ci
    interval = f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})" if ci else ""
    return (
        f"Model version {name}, mean AUROC {evaluation.mean_auroc:.3f}{interval} on "
        f"{evaluation.evaluation_set} (held out). Decision support for research; not a medical device."
    )


# Type 2 attributes of the patient and study modules: present in every result, empty where the
# source had none (older and headerless sources often leave them out).
_TYPE2 = (
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


def _completed(header: Dataset) -> Dataset:
    """A shallow copy of the header (in memory) with the type 2 attributes it lacks, empty."""
    header = copy.copy(header)
    for keyword in _TYPE2:
        if keyword not in header:
            setattr(header, keyword, "")
    return header


def sr_dataset(*, result: ResultObject, header: Dataset) -> hd.sr.ComprehensiveSR:
    prediction = result.received.prediction
    recorded = prediction.recorded_model
    statement = model_statement(prediction)
    header = _completed(header)
    root = hd.sr.ContainerContentItem(name=REPORT_TITLE, template_id=None)
    items = [
        hd.sr.TextContentItem(
            name=MODEL_STATEMENT, value=statement, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        ),
    ]
    # TID 4019 Algorithm Identification: the version that produced the numbers, by name and hash.
    for item in hd.sr.AlgorithmIdentification(
        name=recorded["version_name"],
        version=recorded["sha256"],
        parameters=[f"sha256={recorded['sha256']}", f"untrained={str(prediction.untrained).lower()}"],
        manufacturer=MANUFACTURER,
    ):
        item.RelationshipType = "CONTAINS"
        items.append(item)
    for finding in prediction.results_json["findings"]:
        container = hd.sr.ContainerContentItem(
            name=codes.DCM.Finding, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
        )
        container.ContentSequence = [
            hd.sr.TextContentItem(
                name=FINDING_NAME,
                value=finding["name"],
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.NumContentItem(
                name=PROBABILITY,
                value=round(float(finding["probability"]), 6),
                unit=NO_UNITS,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.NumContentItem(
                name=THRESHOLD,
                value=float(finding["threshold"]),
                unit=NO_UNITS,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
            hd.sr.CodeContentItem(
                name=POSITIVE,
                value=codes.SCT.Yes if finding["positive"] else codes.SCT.No,
                relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
            ),
        ]
        items.append(container)
    root.ContentSequence = items
    sr = hd.sr.ComprehensiveSR(
        evidence=[header],
        content=root,
        series_instance_uid=result.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result.sop_instance_uid,
        instance_number=result.instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # no person verified it
        is_verified=False,
    )
    sr.SeriesDescription = (
        "lungsite AI findings (UNTRAINED model)" if prediction.untrained else "lungsite AI findings"
    )[:64]
    sr.SoftwareVersions = recorded["version_name"][:64]
    sr.ManufacturerModelName = "lungsite"
    return sr


def _overlay_pixels(prediction: Prediction, finding: str, statement: str) -> np.ndarray:
    """(H, W, 3) uint8: the finding's heatmap over the analysed image, with the finding and the
    model statement written in a band on top (a reader sees it on any viewer)."""
    from audit.services import heatmap_png

    with Image.open(io.BytesIO(heatmap_png(prediction=prediction, name=finding))) as picture:
        overlay = picture.convert("RGB")
    band = 40
    canvas = Image.new("RGB", (overlay.width, overlay.height + band), (0, 0, 0))
    canvas.paste(overlay, (0, band))
    draw = ImageDraw.Draw(canvas)
    draw.text((4, 2), f"lungsite heatmap: {finding}", fill=(255, 255, 0))
    draw.text((4, 20), statement[:90], fill=(255, 255, 255))
    return np.asarray(canvas, dtype=np.uint8)


def sc_dataset(*, result: ResultObject, header: Dataset) -> hd.sc.SCImage:
    prediction = result.received.prediction
    statement = model_statement(prediction)
    header = _completed(header)
    pixels = _overlay_pixels(prediction, result.finding, statement)
    sc = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=header,
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=result.series_instance_uid,
        series_number=SC_SERIES_NUMBER,
        sop_instance_uid=result.sop_instance_uid,
        instance_number=result.instance_number,
        manufacturer=MANUFACTURER,
        patient_orientation=("L", "F"),
        transfer_syntax_uid="1.2.840.10008.1.2.1",
    )
    sc.SeriesDescription = (
        "lungsite heatmaps (UNTRAINED model)" if prediction.untrained else "lungsite heatmaps"
    )[:64]
    sc.ImageComments = f"Heatmap of {result.finding}. {statement}"[:10240]
    sc.DerivationDescription = f"Grad-CAM of finding {result.finding}"[:1024]
    sc.BurnedInAnnotation = "YES"  # the finding and the model statement, no patient data
    sc.SoftwareVersions = prediction.recorded_model["version_name"][:64]
    return sc


def result_dataset_bytes(*, result: ResultObject, header: Dataset) -> bytes:
    """The DICOM Part 10 bytes of one result object (SR or heatmap SC)."""
    builder = sr_dataset if result.kind == ResultObject.KIND_SR else sc_dataset
    dataset = builder(result=result, header=header)
    buffer = io.BytesIO()
    dcmwrite(buffer, dataset, enforce_file_format=True)
    return buffer.getvalue()
