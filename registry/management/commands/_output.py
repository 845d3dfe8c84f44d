"""The JSON shape the registry commands print (not a command: Django skips modules starting with _)."""

import json

from rest_framework import serializers

from registry.models import ModelVersion
from registry.serializers import ModelVersionSerializer


class ModelVersionCommandSerializer(ModelVersionSerializer):
    """The API's view of a version, plus where its files are and the thresholds as registered."""

    thresholds = serializers.JSONField()

    class Meta(ModelVersionSerializer.Meta):
        fields = [*ModelVersionSerializer.Meta.fields, "storage_path", "serving_graph_path"]
        read_only_fields = fields


def version_as_dict(version: ModelVersion | None) -> dict | None:
    return None if version is None else ModelVersionCommandSerializer(version).data


def dumps(payload) -> str:
    return json.dumps(payload, indent=2, allow_nan=False)


def one_line(message: object) -> str:
    """CommandError texts stay on one line so scripts can log them as such."""
    return " ".join(str(message).split())


def refused(exc: Exception) -> str:
    message = str(exc)
    return message if message.startswith("Refused") else f"Refused: {message}"
