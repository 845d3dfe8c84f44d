"""The findings as an IHE AI Results measurement report: a Comprehensive 3D SR holding DICOM TID 1500
(highdicom's MeasurementReport), which a PACS AI-results viewer (OHIF's SR panel, highdicom as a
consumer) reads as findings rather than as a text tree.

The tree: observer context (the device: lungsite, the version's name, its weights' sha256),
procedure reported (plain chest X-ray), an image library entry for the analysed image, and one
measurement group (TID 1501) per finding with its tracking identifier and UID, the finding coded
(pacs.coding), the probability and the threshold as numeric measurements (unit "1"), the
qualitative evaluation present/absent at the threshold, and the algorithm (TID 4019). The
honesty statement (pacs.honesty) is a qualitative evaluation of the whole report, in words.
"""

from __future__ import annotations

import copy

import highdicom as hd
from highdicom.sr import CodedConcept
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from pacs import coding
from pacs.honesty import honesty_statement
from pacs.models import ResultObject

MANUFACTURER = "lungsite"
SR_SERIES_NUMBER = 990
# TID 1500 row 12: "Qualitative Evaluations" of the whole report.
QUALITATIVE_EVALUATIONS = CodedConcept("C0034375", "UMLS", "Qualitative Evaluations")


def device_uid(sha256: str) -> str:
    """The Device Observer UID of a model version: the same weights, the same device."""
    return generate_uid(entropy_srcs=["lungsite-device", sha256])


def tracking_uid(result: ResultObject, finding: str) -> str:
    """A finding's Tracking UID, fixed by the result's SOP Instance UID (a retry rebuilds the same)."""
    return generate_uid(entropy_srcs=[result.sop_instance_uid, "tracking", finding])


def algorithm_identification(recorded: dict, untrained: bool) -> hd.sr.AlgorithmIdentification:
    """TID 4019: the version that produced the numbers, by name and by its weights' sha256."""
    return hd.sr.AlgorithmIdentification(
        name=recorded["version_name"][:64],
        version=recorded["sha256"],
        parameters=[f"sha256={recorded['sha256']}", f"untrained={str(untrained).lower()}"],
        manufacturer=MANUFACTURER,
    )


def library_image(source: Dataset) -> Dataset:
    """The image library's view of the source. The projection radiography descriptors (TID 1603)
    need the patient orientation and the imager pixel spacing; a source without them (or with a
    spacing of 0) is described by its SOP class, UIDs and size only, rather than by made-up values."""
    try:
        spacing = [float(v) for v in source.get("ImagerPixelSpacing") or []]
        orientation = list(source.get("PatientOrientation") or [])
    except (TypeError, ValueError):
        spacing, orientation = [], []
    if len(spacing) == 2 and all(v > 0 for v in spacing) and len(orientation) == 2:
        return source
    described = copy.copy(source)
    described.Modality = ""  # in this copy only: highdicom then adds no modality-specific descriptors
    return described


def measurement_report(*, result: ResultObject, source: Dataset) -> hd.sr.MeasurementReport:
    prediction = result.received.prediction
    recorded = prediction.recorded_model
    algorithm = algorithm_identification(recorded, prediction.untrained)
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=device_uid(recorded["sha256"]),
        name="lungsite",
        manufacturer_name=MANUFACTURER,
        model_name=recorded["version_name"][:64],
        serial_number=recorded["sha256"],
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(
            observer_type=codes.DCM.Device, observer_identifying_attributes=device
        )
    )
    source_image = hd.sr.SourceImageForMeasurementGroup.from_source_image(source)
    groups = []
    for finding in prediction.results_json["findings"]:
        concept = coding.finding_concept(finding["name"])
        groups.append(
            hd.sr.MeasurementsAndQualitativeEvaluations(
                tracking_identifier=hd.sr.TrackingIdentifier(
                    uid=tracking_uid(result, finding["name"]), identifier=finding["name"][:64]
                ),
                finding_type=concept,
                algorithm_id=algorithm,
                measurements=[
                    hd.sr.Measurement(
                        name=coding.PROBABILITY,
                        value=round(float(finding["probability"]), 6),
                        unit=coding.NO_UNITS,
                        algorithm_id=algorithm,
                    ),
                    hd.sr.Measurement(
                        name=coding.THRESHOLD, value=float(finding["threshold"]), unit=coding.NO_UNITS
                    ),
                ],
                qualitative_evaluations=[
                    hd.sr.QualitativeEvaluation(
                        name=concept, value=coding.PRESENT if finding["positive"] else coding.ABSENT
                    )
                ],
                source_images=[source_image],
            )
        )
    report = hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=coding.PROCEDURE,
        imaging_measurements=groups,
        referenced_images=[library_image(source)],
    )
    statement = hd.sr.ContainerContentItem(
        name=QUALITATIVE_EVALUATIONS, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
    )
    statement.ContentSequence = [
        hd.sr.TextContentItem(
            name=coding.MODEL_STATEMENT,
            value=honesty_statement(prediction),
            relationship_type=hd.sr.RelationshipTypeValues.CONTAINS,
        )
    ]
    report[0].ContentSequence.append(statement)
    return report


def sr_dataset(*, result: ResultObject, source: Dataset) -> hd.sr.Comprehensive3DSR:
    """The SR of a result row. `source`: the analysed image's header (pacs.header.inherited_header)."""
    prediction = result.received.prediction
    recorded = prediction.recorded_model
    report = measurement_report(result=result, source=source)
    sr = hd.sr.Comprehensive3DSR(
        evidence=[source],
        content=report[0],
        series_instance_uid=result.series_instance_uid,
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=result.sop_instance_uid,
        instance_number=result.instance_number,
        manufacturer=MANUFACTURER,
        is_complete=True,
        is_final=False,  # no person verified it
        is_verified=False,
        performed_procedure_codes=[coding.PROCEDURE],
        coding_schemes=coding.coding_schemes(),
    )
    sr.SeriesDescription = (
        "lungsite AI findings (UNTRAINED model)" if prediction.untrained else "lungsite AI findings"
    )
    sr.SoftwareVersions = recorded["version_name"][:64]
    sr.ManufacturerModelName = "lungsite"
    return sr
