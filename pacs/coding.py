"""The codes lungsite's results are written in: each finding name the registry can serve mapped to
SNOMED CT, with where the mapping comes from, and a local coding scheme (declared in every SR by its
Coding Scheme Identification) for a name no reviewed code exists for.

Review: every SNOMED CT code below was checked against a published source named in its row: DICOM
PS3.16 (where the concept is in a DICOM context group; pydicom's code dictionary lists those, and
tests/pacs/test_results.py checks the rows against it), or SNOMED CT International concepts as used
in published public mappings of the NIH ChestX-ray14 labels. Names mean what the ChestX-ray14
labels mean (findings seen on a frontal chest radiograph). A site that holds a SNOMED CT licence and
a terminologist should review this table before relying on the codes; a name that is missing here
is sent in the local scheme, never under a guessed code.
"""

from __future__ import annotations

from dataclasses import dataclass

from highdicom.coding_schemes import CodingSchemeIdentificationItem
from highdicom.sr import CodedConcept
from pydicom.sr.codedict import codes

SCT = "SCT"
SNOMED_URI = "http://snomed.info/sct"
# Concepts no reviewed standard code names are coded here ("99" prefix: a private scheme, PS3.16
# section 8). Its identification travels in each SR.
LOCAL_SCHEME = "99LUNGSITE"
LOCAL_SCHEME_NAME = "lungsite finding names"
LOCAL_SCHEME_UID = "2.25.170347305424196282003914593468186733517"  # fixed, from a random UUID
FHIR_LOCAL_SYSTEM = f"urn:oid:{LOCAL_SCHEME_UID}"

DICOM_CID = "DICOM PS3.16 {cid}"
CHESTXRAY14 = "SNOMED CT International; public ChestX-ray14 label mappings"


@dataclass(frozen=True)
class FindingCode:
    code: str
    meaning: str
    source: str


# Finding name (as in a model version's class_names) -> SNOMED CT concept.
FINDINGS: dict[str, FindingCode] = {
    "Atelectasis": FindingCode("46621007", "Atelectasis", CHESTXRAY14),
    "Cardiomegaly": FindingCode("8186001", "Cardiomegaly", CHESTXRAY14),
    "Consolidation": FindingCode("95436008", "Lung consolidation", CHESTXRAY14),
    "Edema": FindingCode("19242006", "Pulmonary edema", DICOM_CID.format(cid="CID 3700")),
    "Effusion": FindingCode("60046008", "Pleural effusion", DICOM_CID.format(cid="CID 8134")),
    "Emphysema": FindingCode("87433001", "Pulmonary emphysema", CHESTXRAY14),
    "Fibrosis": FindingCode("51615001", "Fibrosis of lung", CHESTXRAY14),
    "Infiltration": FindingCode("409609008", "Radiologic infiltrate of lung", CHESTXRAY14),
    "Mass": FindingCode("4147007", "Mass", DICOM_CID.format(cid="CID 6104")),
    "Nodule": FindingCode("27925004", "Nodule", DICOM_CID.format(cid="CID 6104")),
    "Pneumonia": FindingCode("233604007", "Pneumonia", CHESTXRAY14),
    "Pneumothorax": FindingCode("36118008", "Pneumothorax", DICOM_CID.format(cid="CID 6105")),
    # "Pleural_Thickening" and "Hernia" (the 14th ChestX-ray14 label): no code was verified against
    # a source; they go in the local scheme.
}
# The same concepts under the other spellings model cards use.
ALIASES = {"Pleural Effusion": "Effusion", "Pulmonary Edema": "Edema", "Lung Consolidation": "Consolidation"}

# The procedure every result reports on (TID 1500 "Procedure reported"): SNOMED CT 399208008.
PROCEDURE = CodedConcept("399208008", SCT, "Plain X-ray of chest")
PROBABILITY = codes.DCM.Probability  # (122157, DCM)
THRESHOLD = codes.DCM.ThresholdValue  # (122411, DCM)
NO_UNITS = codes.UCUM.NoUnits  # ("1", UCUM): a probability is a fraction
PRESENT = codes.SCT.Present
ABSENT = codes.SCT.Absent
MODEL_STATEMENT = CodedConcept("model-statement", LOCAL_SCHEME, "Model statement")
HEATMAP = CodedConcept("gradcam", LOCAL_SCHEME, "Grad-CAM activation relative to the case maximum")


def finding_code(name: str) -> FindingCode | None:
    """The reviewed SNOMED CT concept of a finding name, or None."""
    return FINDINGS.get(ALIASES.get(name, name))


def local_code_value(name: str) -> str:
    """The local scheme's code for a finding name: the name itself, as short as SH allows."""
    return name.strip()[:16] or "unnamed"


def finding_concept(name: str) -> CodedConcept:
    """The coded concept of a finding: SNOMED CT when reviewed, else the local scheme."""
    code = finding_code(name)
    if code is not None:
        return CodedConcept(code.code, SCT, code.meaning)
    return CodedConcept(local_code_value(name), LOCAL_SCHEME, name[:64])


def coding_schemes() -> list[CodingSchemeIdentificationItem]:
    """The Coding Scheme Identification Sequence items of lungsite's local scheme."""
    return [
        CodingSchemeIdentificationItem(
            designator=LOCAL_SCHEME,
            name=LOCAL_SCHEME_NAME,
            version="1",
            uid=LOCAL_SCHEME_UID,
            responsible_organization="lungsite",
        )
    ]
