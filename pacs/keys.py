"""Keyed hashes that stand for identifiers lungsite must not keep: the patient ID and the accession
number of a study from the PACS. HMAC-SHA256 under LUNGSITE_PATIENT_KEY_SECRET: equal for equal
values (earlier studies of the same patient, a study found by its accession number), not reversible
without the secret."""

from __future__ import annotations

import hashlib
import hmac

from django.conf import settings


def keyed_hash(*values: str) -> str:
    """HMAC-SHA256 (hex) of `values` under LUNGSITE_PATIENT_KEY_SECRET, or "" when the last value
    is empty: equal for equal values, not reversible without the secret."""
    if not values[-1]:
        return ""
    message = "\x00".join(values).encode()
    return hmac.new(settings.LUNGSITE_PATIENT_KEY_SECRET.encode(), message, hashlib.sha256).hexdigest()


def accession_key(accession_number: str) -> str:
    """What stands for an accession number (it identifies the patient's order): its keyed hash. The
    worklist hashes what a radiologist types in and compares."""
    return keyed_hash("accession", accession_number.strip())
