"""Helpers shared by the reliability tests: raw multipart uploads (the test client would strip the
file name to its basename), a count of stored files, and token clients."""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import pytest
from django.core.files.storage import storages

PREDICTIONS_URL = "/api/v1/predictions/"


def multipart(field: str, filename: str, data: bytes, content_type: str = "application/octet-stream"):
    """(body, content type) of a multipart form with one file, the file name sent verbatim."""
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
        f"Content-Type: {content_type}\r\n\r\n"
    ).encode("utf-8", "surrogateescape")
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


def post_image(client, data: bytes, filename: str = "x.png", url: str = PREDICTIONS_URL, **extra):
    body, content_type = multipart("image", filename, data)
    return client.post(url, data=body, content_type=content_type, **extra)


def stored_files() -> list[Path]:
    """Every file under the xray_images storage (the autouse fixture points it at tmp_path)."""
    root = Path(storages["xray_images"].location).resolve()
    if not root.exists():
        return []
    return sorted(Path(folder) / name for folder, _, names in os.walk(root) for name in names)


def error_of(response) -> dict:
    """The {"code", "message"} of an API error response, asserting the shape on the way."""
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return body["error"]


@pytest.fixture
def token_client(api):
    """token_client(user) -> an APIClient that authenticates with a real token of that user (the
    suite-wide `api` fixture; the model cache is cold per test by tests/conftest.py too)."""
    return api
