"""The JSON shape the registry commands print (not a command: Django skips modules starting with _)."""

import json

from registry.models import ModelVersion


def version_as_dict(version: ModelVersion | None) -> dict | None:
    if version is None:
        return None
    return {
        "id": version.pk,
        "version_name": version.version_name,
        "is_active": version.is_active,
        "untrained": version.untrained,
        "sha256": version.sha256,
        "storage_path": version.storage_path,
        "serving_graph_sha256": version.serving_graph_sha256,
        "serving_graph_path": version.serving_graph_path,
        "architecture": version.architecture,
        "class_names": version.class_names,
        "preprocessing": version.preprocessing,
        "thresholds": version.thresholds,
        "accuracy_auroc": version.accuracy_auroc,
        "per_class_auroc": version.per_class_auroc,
        "notes": version.notes,
        "created_at": version.created_at.isoformat() if version.created_at else None,
        "activated_at": version.activated_at.isoformat() if version.activated_at else None,
    }


def dumps(payload) -> str:
    return json.dumps(payload, indent=2, allow_nan=False)


def one_line(message: object) -> str:
    """CommandError texts stay on one line so scripts can log them as such."""
    return " ".join(str(message).split())


def refused(exc: Exception) -> str:
    message = str(exc)
    return message if message.startswith("Refused") else f"Refused: {message}"
