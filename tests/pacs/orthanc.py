"""A real Orthanc for the PACS tests: its own config, storage folder and free loopback ports, the
DICOMweb plugin, a DICOM modality entry for lungsite's C-STORE receiver and a DICOMweb server entry
for lungsite's STOW-RS endpoint. Tests skip, saying why, where Orthanc is not installed."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.reliability.liveserver import free_port

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")
USER, PASSWORD = "lungsite", "orthanc-test-password"


def orthanc_binary() -> str:
    binary = shutil.which("Orthanc") or ("/usr/sbin/Orthanc" if Path("/usr/sbin/Orthanc").exists() else None)
    if binary is None:
        pytest.skip("Orthanc is not installed (apt-get install orthanc orthanc-dicomweb; .ci/run does)")
    if not PLUGIN.exists():
        pytest.skip(
            f"the Orthanc DICOMweb plugin is not installed ({PLUGIN}; apt-get install orthanc-dicomweb)"
        )
    return binary


class Orthanc:
    """Orthanc on 127.0.0.1 (remote access off), started and stopped by the test."""

    def __init__(
        self, folder: Path, *, lungsite_dicom_port: int, lungsite_url: str, token: str, chunked: bool = False
    ) -> None:
        self.binary = orthanc_binary()
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.http_port, self.dicom_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.dicomweb_url = f"{self.url}/dicom-web"
        self.config = {
            "Name": "lungsite-test-pacs",
            "StorageDirectory": str(folder / "storage"),
            "IndexDirectory": str(folder / "index"),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": "TESTPACS",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": True,
            "RegisteredUsers": {USER: PASSWORD},
            "Plugins": [str(PLUGIN)],
            # Only known modalities may store; lungsite is the one.
            "DicomAlwaysAllowStore": False,
            "DicomModalities": {"lungsite": ["LUNGSITE", "127.0.0.1", lungsite_dicom_port]},
            # The tests analyse in the receiving process (Celery eager mode): allow for it.
            "DicomScuTimeout": 300,
            "HttpTimeout": 300,
            "DicomWeb": {
                "Enable": True,
                "Root": "/dicom-web/",
                "Servers": {
                    "lungsite": {
                        "Url": lungsite_url.rstrip("/") + "/dicom-web/",
                        "HttpHeaders": {"Authorization": f"Token {token}"},
                    }
                },
            },
        }
        if not chunked:
            # Django's test server reads no chunked request bodies (lungsite answers it 411);
            # gunicorn does, and test_stow_gunicorn.py keeps Orthanc's default (chunked).
            self.config["DicomWeb"]["Servers"]["lungsite"]["ChunkedTransfers"] = False
        self.config_path = folder / "orthanc.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        self.log = open(self.folder / "orthanc.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [self.binary, str(self.config_path)], stdout=self.log, stderr=subprocess.STDOUT, cwd=self.folder
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(requests.RequestException):
                if self.get("/system").status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError(f"Orthanc did not answer within {timeout}s:\n{self.log_tail()}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=30)
        if self.process is not None:
            self.log.close()
        self.process = None

    def log_tail(self, size: int = 4000) -> str:
        path = self.folder / "orthanc.log"
        return path.read_bytes()[-size:].decode(errors="replace") if path.exists() else ""

    def _session(self) -> requests.Session:
        session = requests.Session()
        session.trust_env = False
        session.auth = (USER, PASSWORD)
        return session

    def get(self, path: str, **kwargs) -> requests.Response:
        with self._session() as session:
            return session.get(self.url + path, timeout=60, **kwargs)

    def post(self, path: str, **kwargs) -> requests.Response:
        with self._session() as session:
            return session.post(self.url + path, timeout=600, **kwargs)

    def upload(self, data: bytes) -> dict:
        """REST upload of one instance: {"ID", "ParentStudy", ...}."""
        response = self.post("/instances", data=data)
        response.raise_for_status()
        return response.json()
