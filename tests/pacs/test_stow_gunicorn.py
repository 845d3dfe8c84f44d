"""STOW-RS under gunicorn with chunked request bodies: Orthanc with its default settings (it sends
STOW-RS chunked) and a curl-style `Transfer-Encoding: chunked` client. Every 200 stands for rows
recorded in lungsite's database. Needs Postgres (the site runs in its own processes, on a scratch
database of the test server)."""

from __future__ import annotations

import json
import subprocess
import uuid

import psycopg
import pydicom
import pytest
import requests
from django.db import connection

from tests.conftest import shared_data_path
from tests.pacs.orthanc import Orthanc
from tests.reliability.liveserver import (
    PYTHON,
    ROOT,
    Gunicorn,
    database_url,
    free_port,
    prepared_site,
    scratch_database,
    site_env,
)

pytestmark = pytest.mark.django_db(transaction=True)

MAKE_PACS_USER = """
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token
user = get_user_model().objects.create_user(username="pacs", password=None)
permission = Permission.objects.get(content_type__app_label="pacs", codename="add_receivedinstance")
user.user_permissions.add(permission)
print(Token.objects.create(user=user).key)
"""


def _rows(params: dict, name: str) -> list[tuple]:
    with psycopg.connect(**dict(params, dbname=name)) as conn:
        return conn.execute(
            "SELECT source, state, sop_instance_uid FROM pacs_received_instances ORDER BY id"
        ).fetchall()


def _stow_body(*parts: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    body = b"".join(
        f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode() + part + b"\r\n" for part in parts
    )
    return (
        body + f"--{boundary}--\r\n".encode(),
        f'multipart/related; type="application/dicom"; boundary={boundary}',
    )


def test_it_stores_chunked_stow_rs_bodies_under_gunicorn(tmp_path):
    if connection.vendor != "postgresql":
        pytest.skip("the site runs in its own processes on a scratch database: needs Postgres (DATABASE_URL)")
    with scratch_database() as (params, name):
        env = site_env(database_url(params, name), tmp_path / "site")
        prepared_site(env)
        token = subprocess.run(
            [PYTHON, "manage.py", "shell", "-c", MAKE_PACS_USER],
            cwd=ROOT, env=env, capture_output=True, text=True, check=True, timeout=120,
        ).stdout.strip().splitlines()[-1]  # fmt: skip
        with Gunicorn(env, workers=1, log=tmp_path / "gunicorn.log") as site:
            site.wait_ready()
            orthanc = Orthanc(
                tmp_path / "orthanc",
                lungsite_dicom_port=free_port(),
                lungsite_url=site.url,
                token=token,
                chunked=True,
            )
            assert (
                "ChunkedTransfers" not in orthanc.config["DicomWeb"]["Servers"]["lungsite"]
            )  # the default: on
            orthanc.start()
            try:
                chest = shared_data_path("pydicom_data", "RG1_UNCR.dcm").read_bytes()
                uploaded = orthanc.upload(chest)
                sent = orthanc.post("/dicom-web/servers/lungsite/stow", json={"Resources": [uploaded["ID"]]})
                assert sent.status_code == 200, sent.text + orthanc.log_tail() + site.log_tail()
            finally:
                orthanc.stop()
            chest_uid = pydicom.dcmread(
                shared_data_path("pydicom_data", "RG1_UNCR.dcm"), stop_before_pixels=True
            )
            assert _rows(params, name) == [("stow-rs", "queued", chest_uid.SOPInstanceUID)]

            # curl -H "Transfer-Encoding: chunked": requests sends a generator body chunked.
            other = shared_data_path("nhsx_nccid", "sample_non_chest_OT.dcm").read_bytes()
            body, content_type = _stow_body(other)
            chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
            with requests.Session() as session:
                session.trust_env = False
                answer = session.post(
                    f"{site.url}/dicom-web/studies",
                    data=chunks,
                    headers={"Content-Type": content_type, "Authorization": f"Token {token}"},
                    timeout=120,
                )
            assert answer.status_code == 200, answer.text
            stored = json.loads(answer.content)["00081199"]["Value"]
            other_uid = pydicom.dcmread(
                shared_data_path("nhsx_nccid", "sample_non_chest_OT.dcm")
            ).SOPInstanceUID
            assert [item["00081155"]["Value"][0] for item in stored] == [other_uid]
            assert [row[:2] for row in _rows(params, name)] == [("stow-rs", "queued"), ("stow-rs", "skipped")]
