"""The patient-data filter on its own: values of the header in hand are redacted from every record
(any logger, message, arguments and exception text), warnings raised while building are logged
redacted, and quoted values in the DICOM libraries' records are redacted outside any header."""

from __future__ import annotations

import logging
import warnings

import pydicom

from pacs.phi import REDACTED, patient_data, patient_values


def _header() -> pydicom.Dataset:
    header = pydicom.Dataset()
    header.PatientName = "Brightwater^Odalys"
    header.PatientID = "PID-5531"
    header.PatientBirthDate = "19511103"
    header.OtherPatientIDsSequence = [pydicom.Dataset()]
    header.OtherPatientIDsSequence[0].PatientID = "OTHER-884"
    header.PatientSex = "F"
    return header


def test_it_redacts_the_values_in_hand_from_every_logger_and_the_warnings(caplog):
    header = _header()
    assert {"Brightwater^Odalys", "Brightwater", "Odalys", "Brightwater Odalys", "OTHER-884"} <= set(
        patient_values(header)
    )
    caplog.set_level(logging.DEBUG)
    with patient_data(header):
        logging.getLogger("somelibrary.deep").info("patient %s born %s", "Brightwater^Odalys", "19511103")
        warnings.warn('The string "Odalys" is a single component', UserWarning, stacklevel=1)
        try:
            raise ValueError("bad id PID-5531")
        except ValueError:
            logging.getLogger("pacs").exception("failed for OTHER-884")
    logging.getLogger("highdicom.base").warning('value "Anyone^Else" outside any header')
    text = caplog.text
    for value in ("Brightwater", "Odalys", "19511103", "PID-5531", "OTHER-884", "Anyone^Else"):
        assert value not in text, value
    assert text.count(REDACTED) >= 6
    assert "single component" in text and "ValueError" in text
