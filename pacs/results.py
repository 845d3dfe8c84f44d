"""A result row (pacs.models.ResultObject) as DICOM Part 10 bytes, built from the audit row and the
source's header (read from the PACS, held in memory only): the TID 1500 SR (pacs.sr), a heatmap's
Parametric Map (pacs.parametric_map) or Secondary Capture (pacs.secondary_capture). Every object
joins the source study; the values it inherits are checked first (pacs.header), and the patient's
values are kept out of the logs while it is built (pacs.phi)."""

from __future__ import annotations

import io

from pydicom import dcmwrite
from pydicom.dataset import Dataset

from pacs.header import inherited_header
from pacs.models import ResultObject
from pacs.parametric_map import parametric_map_dataset
from pacs.phi import patient_data
from pacs.secondary_capture import sc_dataset
from pacs.sr import sr_dataset

BUILDERS = {
    ResultObject.KIND_SR: sr_dataset,
    ResultObject.KIND_PM: parametric_map_dataset,
    ResultObject.KIND_SC: sc_dataset,
}


def result_dataset(*, result: ResultObject, header: Dataset) -> Dataset:
    """The DICOM object of one result row."""
    with patient_data(header):
        return BUILDERS[result.kind](result=result, source=inherited_header(header))


def result_dataset_bytes(*, result: ResultObject, header: Dataset) -> bytes:
    """The DICOM Part 10 bytes of one result row."""
    with patient_data(header):
        dataset = result_dataset(result=result, header=header)
        buffer = io.BytesIO()
        dcmwrite(buffer, dataset, enforce_file_format=True)
        return buffer.getvalue()
