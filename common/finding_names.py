"""How finding names are compared wherever people type or import them (label tables, feedback):
case-, space-, hyphen- and underscore-insensitively (``Pleural_Thickening`` is ``Pleural
Thickening``), with the synonyms datasets use for the same finding (``Effusion`` is ``Pleural
Effusion``)."""

from __future__ import annotations

import re
from collections.abc import Iterable

# Same finding, different names across datasets (keys and values in normalised form).
SYNONYMS = {"pleuraleffusion": "effusion", "infiltrate": "infiltration", "infiltrates": "infiltration"}


def normalise(name: str) -> str:
    """The form names are compared in: lower case without spaces, hyphens or underscores, synonyms
    mapped to one name."""
    key = re.sub(r"[\s_\-]+", "", str(name).strip().lower())
    return SYNONYMS.get(key, key)


def finding_match(name: str, findings: Iterable[str]) -> str | None:
    """The finding of `findings` that `name` names (exactly, or after `normalise`), or None."""
    findings = list(findings)
    if name in findings:
        return name
    key = normalise(name)
    return next((finding for finding in findings if normalise(finding) == key), None)
