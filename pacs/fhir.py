"""A prediction as FHIR R4 resources, for a hospital's EHR integration engine: a Bundle (type
collection) of one DiagnosticReport, one Observation per finding and the Device (lungsite, the model
version and its sha256) that made them. Built and checked with `fhir.resources`' R4B models, whose
DiagnosticReport, Observation, Device and Bundle have the R4 structure.

Each Observation: the finding coded (SNOMED CT where reviewed, pacs.coding; else lungsite's local
system), the probability as a Quantity (UCUM "1"), the threshold as the reference range's upper
bound, interpretation POS/NEG, the device, and the honesty statement as a note. Status
"preliminary": no person verified the result. No patient: lungsite keeps none; a PACS prediction
names its imaging study by Study Instance UID.
"""

from __future__ import annotations

import uuid

from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.device import Device
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.observation import Observation

from audit.models import Prediction
from pacs import coding
from pacs.honesty import honesty_statement
from pacs.models import ReceivedInstance
from pacs.sr import device_uid

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
DIAGNOSTIC_SERVICE = "http://terminology.hl7.org/CodeSystem/v2-0074"
MEDIA_TYPE = "application/fhir+json"


def _urn(prediction: Prediction, *parts: str) -> str:
    """A fixed urn:uuid per resource of a prediction: the same prediction, the same Bundle."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, '/'.join(['lungsite', str(prediction.pk), *parts]))}"


def _concept(name: str) -> dict:
    code = coding.finding_code(name)
    if code is not None:
        coded = {"system": coding.SNOMED_URI, "code": code.code, "display": code.meaning}
    else:
        coded = {"system": coding.FHIR_LOCAL_SYSTEM, "code": coding.local_code_value(name), "display": name}
    return {"coding": [coded], "text": name}


def _quantity(value: float) -> dict:
    return {"value": round(float(value), 6), "unit": "probability", "system": UCUM, "code": "1"}


def prediction_bundle(prediction: Prediction) -> Bundle:
    recorded = prediction.recorded_model
    statement = honesty_statement(prediction)
    issued = prediction.created_at.isoformat()
    device_ref = _urn(prediction, "device")
    device = Device(
        identifier=[{"system": "urn:ietf:rfc:3986", "value": f"urn:oid:{device_uid(recorded['sha256'])}"}],
        manufacturer="lungsite",
        deviceName=[
            {"name": "lungsite", "type": "manufacturer-name"},
            {"name": recorded["version_name"], "type": "model-name"},
        ],
        version=[
            {"type": {"text": "model version"}, "value": recorded["version_name"]},
            {"type": {"text": "weights sha256"}, "value": recorded["sha256"]},
        ],
        note=[{"text": statement}],
    )
    observations = []
    for finding in prediction.results_json["findings"]:
        positive = bool(finding["positive"])
        observations.append(
            (
                _urn(prediction, "finding", finding["name"]),
                Observation(
                    status="preliminary",
                    category=[
                        {
                            "coding": [
                                {"system": OBSERVATION_CATEGORY, "code": "imaging", "display": "Imaging"}
                            ]
                        }
                    ],
                    code=_concept(finding["name"]),
                    effectiveDateTime=issued,
                    issued=issued,
                    valueQuantity=_quantity(finding["probability"]),
                    interpretation=[
                        {
                            "coding": [
                                {
                                    "system": INTERPRETATION,
                                    "code": "POS" if positive else "NEG",
                                    "display": "Positive" if positive else "Negative",
                                }
                            ]
                        }
                    ],
                    referenceRange=[
                        {
                            "high": _quantity(finding["threshold"]),
                            "text": f"Positive at a probability of {finding['threshold']:g} or more",
                        }
                    ],
                    device={"reference": device_ref, "display": f"lungsite {recorded['version_name']}"},
                    note=[{"text": statement}],
                ),
            )
        )
    positives = [f["name"] for f in prediction.results_json["findings"] if f["positive"]]
    report = {
        "identifier": [{"system": "urn:lungsite:prediction", "value": str(prediction.pk)}],
        "status": "preliminary",
        "category": [{"coding": [{"system": DIAGNOSTIC_SERVICE, "code": "RAD", "display": "Radiology"}]}],
        "code": {
            "coding": [{"system": LOINC, "code": "18748-4", "display": "Diagnostic imaging study"}],
            "text": "lungsite chest X-ray findings",
        },
        "effectiveDateTime": issued,
        "issued": issued,
        "result": [{"reference": ref, "display": obs.code.text} for ref, obs in observations],
        "conclusion": f"{statement} Positive at their thresholds: {', '.join(positives) or 'none'}.",
        "conclusionCode": [_concept(name) for name in positives] or None,
    }
    received = ReceivedInstance.objects.filter(prediction=prediction).first()
    if received is not None and received.study_instance_uid:
        report["imagingStudy"] = [
            {
                "type": "ImagingStudy",
                "identifier": {"system": "urn:dicom:uid", "value": f"urn:oid:{received.study_instance_uid}"},
            }
        ]
    entries = [{"fullUrl": _urn(prediction, "report"), "resource": DiagnosticReport(**report)}]
    entries += [{"fullUrl": ref, "resource": obs} for ref, obs in observations]
    entries.append({"fullUrl": device_ref, "resource": device})
    return Bundle(
        identifier={"system": "urn:lungsite:prediction-bundle", "value": str(prediction.pk)},
        type="collection",
        timestamp=issued,
        entry=entries,
    )


def prediction_fhir_json(prediction: Prediction) -> str:
    """The Bundle as FHIR JSON."""
    return prediction_bundle(prediction).json()
