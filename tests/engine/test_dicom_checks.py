"""The frontal-chest check, on the real DICOM files of ../shared/data and on their headers changed in
memory (a lateral, another body part), and as the upload API applies it."""

from __future__ import annotations

import io

import pydicom
import pytest

from engine.dicom_checks import burned_in_refusal, frontal_chest_refusal
from tests.conftest import shared_data_path
from tests.reliability.conftest import post_image


def _header(*parts: str) -> pydicom.Dataset:
    return pydicom.dcmread(shared_data_path(*parts), force=True, stop_before_pixels=True)


def _bytes_with(ds_path: tuple[str, ...], **tags) -> bytes:
    ds = pydicom.dcmread(shared_data_path(*ds_path), force=True)
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    buffer = io.BytesIO()
    ds.save_as(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "parts",
    [
        ("pydicom_data", "RG1_UNCR.dcm"),  # CR, CHEST, PA
        ("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm"),  # headerless CR chest PA
        ("nhsx_nccid", "1.3.6.1.4.1.11129.5.5.110503645592756492463169821050252582267888.dcm"),  # DX, no tags
    ],
)
def test_it_accepts_frontal_chest_radiographs(parts):
    assert frontal_chest_refusal(_header(*parts)) is None


def test_it_names_why_other_images_are_not_analysed():
    assert frontal_chest_refusal(_header("pydicom_data", "RG3_J2KI.dcm")).startswith("body part EXTREMITY")
    assert frontal_chest_refusal(_header("nhsx_nccid", "sample_non_chest_OT.dcm")).startswith("modality OT")
    lateral = _header("pydicom_data", "RG1_UNCR.dcm")
    lateral.ViewPosition = "LL"
    assert frontal_chest_refusal(lateral) == "lateral view (LL): only frontal chest radiographs are analysed"


def test_it_refuses_what_it_cannot_read_rather_than_letting_it_through():
    # A Modality encoded as a number (VR US) or a body part as a decimal string: fail closed.
    header = _header("pydicom_data", "RG1_UNCR.dcm")
    header.add_new(0x00080060, "US", 2)
    assert "cannot be read" in frontal_chest_refusal(header)
    header = _header("pydicom_data", "RG1_UNCR.dcm")
    header.add_new(0x00180015, "DS", "1.5")
    assert frontal_chest_refusal(header) is not None


def test_it_refuses_burned_in_annotation_and_unreadable_values_of_it():
    header = _header("pydicom_data", "RG1_UNCR.dcm")
    assert burned_in_refusal(header) is None
    header.BurnedInAnnotation = "YES"
    assert "burned-in annotation" in burned_in_refusal(header)
    header.BurnedInAnnotation = "MAYBE"
    assert burned_in_refusal(header) is not None
    header.BurnedInAnnotation = "NO"
    assert burned_in_refusal(header) is None


def test_it_refuses_a_lateral_dicom_upload_with_422_and_writes_nothing(api, clinician, starter_model):
    from audit.models import Prediction

    data = _bytes_with(("pydicom_data", "RG1_UNCR.dcm"), ViewPosition="LL")
    response = post_image(api(clinician), data, "lateral.dcm")
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "not_frontal_chest"
    assert error["message"].startswith("Lateral view (LL): only frontal chest radiographs are analysed")
    assert Prediction.objects.count() == 0


def test_it_refuses_a_non_chest_dicom_on_the_upload_page(client, clinician, starter_model):
    from audit.models import Prediction

    client.force_login(clinician)
    with shared_data_path("pydicom_data", "RG3_J2KI.dcm").open("rb") as handle:
        response = client.post("/", {"image": handle})
    assert response.status_code == 422
    assert "only frontal chest radiographs are analysed" in response.content.decode()
    assert Prediction.objects.count() == 0
