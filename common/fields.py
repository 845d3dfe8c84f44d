"""Serializer fields that accept exactly what the OpenAPI schema says they accept, so a request the
schema calls invalid is refused (DRF's own fields turn numbers into text and take many date shapes)."""

from __future__ import annotations

import re

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

# RFC 3339: a full date, or a date-time with seconds and an offset (what `format: date-time` means).
_DATE = r"\d{4}-\d{2}-\d{2}"
_DATE_TIME = rf"{_DATE}[Tt]\d{{2}}:\d{{2}}:\d{{2}}(\.\d+)?([Zz]|[+-]\d{{2}}:\d{{2}})"
_INSTANT = re.compile(rf"{_DATE}|{_DATE_TIME}")


class TextField(serializers.CharField):
    """Text only: a JSON number, boolean or object is refused instead of turned into text. NUL
    characters are refused (no database column holds them), and the schema says so (a pattern)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.validators.append(RegexValidator(r"^[^\x00]+$", "Null characters are not allowed."))

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "type": "string",
        "anyOf": [{"format": "date-time"}, {"format": "date"}, {"type": "string", "maxLength": 0}],
    }
)
class InstantField(serializers.DateTimeField):
    """An RFC 3339 date-time with its offset (2026-12-01T08:30:00Z), or a date (00:00 UTC); an empty
    value (`?created_after=`) is no value (None)."""

    default_error_messages = {
        "invalid": "Give an RFC 3339 date-time with its offset (2026-12-01T08:30:00Z) or a date (2026-12-01)."
    }

    def validate_empty_values(self, data):
        if data == "":
            return True, None
        return super().validate_empty_values(data)

    def to_internal_value(self, value):
        if not isinstance(value, str) or not _INSTANT.fullmatch(value.strip()):
            self.fail("invalid")
        return super().to_internal_value(value.strip())
