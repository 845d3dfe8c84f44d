"""Every DICOM object lungsite makes (SR, parametric map, secondary capture), built against every
DICOM source file in ../shared/data (headers with invalid values among them), passes Debian's
dicom3tools `dciodvfy` with no error."""

from __future__ import annotations

import io
import shutil
import subprocess

import pydicom
import pytest

from pacs.models import ReceivedInstance, ResultObject
from pacs.results import result_dataset_bytes
from pacs.services import instance_receive
from tests.conftest import shared_data_path

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _sources() -> list:
    root = shared_data_path()
    return sorted(root.rglob("*.dcm"))


@pytest.fixture
def dciodvfy() -> str:
    binary = shutil.which("dciodvfy")
    if binary is None:
        pytest.skip("dciodvfy is not installed (apt-get install dicom3tools; .ci/run does)")
    return binary


def test_it_makes_objects_dciodvfy_finds_no_error_in_for_every_source(
    db, starter_model, settings, tmp_path, dciodvfy
):
    settings.LUNGSITE_DICOMWEB_URL = ""
    chest = shared_data_path("dcmfx_fo-dicom", "CR-MONO1-10-chest.dcm").read_bytes()
    received = instance_receive(dataset_bytes=chest, source=ReceivedInstance.SOURCE_CSTORE)
    results = [received.results.filter(kind=kind).first() for kind, _ in ResultObject.KIND_CHOICES]
    assert all(results), "the starter model should give at least one positive finding here"
    sources = _sources()
    assert len(sources) >= 8
    errors = {}
    for path in sources:
        header = pydicom.dcmread(path, force=True, stop_before_pixels=True)
        for result in results:
            data = result_dataset_bytes(result=result, header=header)
            out = tmp_path / f"{path.stem}-{result.kind}.dcm"
            out.write_bytes(data)
            report = subprocess.run([dciodvfy, str(out)], capture_output=True, text=True, timeout=120)
            lines = (report.stdout + report.stderr).splitlines()
            found = [line for line in lines if line.startswith("Error")]
            if found:
                errors[out.name] = found
            assert pydicom.dcmread(io.BytesIO(data)).StudyInstanceUID == header.StudyInstanceUID
    assert errors == {}
