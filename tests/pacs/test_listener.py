"""The C-STORE door: callers outside the allow-list and calls to another AE title are rejected
(DCMTK's storescu as the sender), DICOM TLS when a certificate is set, loopback unless told
otherwise, and no network address without an allow-list."""

from __future__ import annotations

import shutil
import ssl
import subprocess

import pytest
from pynetdicom import AE
from pynetdicom.sop_class import Verification

from pacs.listener import ListenerRefused, listener_start
from pacs.models import ReceivedInstance
from tests.conftest import shared_data_path
from tests.reliability.liveserver import free_port

NON_CHEST = ("nhsx_nccid", "sample_non_chest_OT.dcm")
pytestmark = pytest.mark.django_db(transaction=True)  # the receiver writes from its own thread


@pytest.fixture
def storescu() -> str:
    binary = shutil.which("storescu")
    if binary is None:
        pytest.skip("DCMTK's storescu is not installed (apt-get install dcmtk; .ci/run does)")
    return binary


@pytest.fixture
def guarded_listener(settings):
    settings.LUNGSITE_DICOM_CALLING_AETS = ["TESTPACS"]
    port = free_port()
    server = listener_start(host="127.0.0.1", port=port, block=False)
    yield port
    server.shutdown()


def _send(storescu: str, port: int, calling: str, called: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            storescu,
            "-aet",
            calling,
            "-aec",
            called,
            "127.0.0.1",
            str(port),
            str(shared_data_path(*NON_CHEST)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_it_rejects_unknown_calling_and_wrong_called_ae_titles(guarded_listener, storescu):
    intruder = _send(storescu, guarded_listener, "INTRUDER", "LUNGSITE")
    assert intruder.returncode != 0 and "Rejected" in intruder.stdout + intruder.stderr
    wrong_door = _send(storescu, guarded_listener, "TESTPACS", "SOMEONEELSE")
    assert wrong_door.returncode != 0 and "Rejected" in wrong_door.stdout + wrong_door.stderr
    assert ReceivedInstance.objects.count() == 0

    allowed = _send(storescu, guarded_listener, "TESTPACS", "LUNGSITE")
    assert allowed.returncode == 0, allowed.stdout + allowed.stderr
    assert list(ReceivedInstance.objects.values_list("source", "modality")) == [("c-store", "OT")]


def test_it_refuses_to_listen_on_a_network_address_without_an_allow_list(settings):
    settings.LUNGSITE_DICOM_CALLING_AETS = []
    with pytest.raises(ListenerRefused, match="LUNGSITE_DICOM_CALLING_AETS"):
        listener_start(host="0.0.0.0", port=free_port(), block=False)
    assert settings.LUNGSITE_DICOM_HOST == "127.0.0.1"  # the default bind


def test_it_speaks_dicom_tls_when_given_a_certificate(settings, tmp_path):
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    settings.LUNGSITE_DICOM_TLS_CERT, settings.LUNGSITE_DICOM_TLS_KEY = str(cert), str(key)
    port = free_port()
    server = listener_start(host="127.0.0.1", port=port, block=False)
    try:
        scu = AE(ae_title="TESTSCU")
        scu.add_requested_context(Verification)
        plain = scu.associate("127.0.0.1", port, ae_title="LUNGSITE")
        assert not plain.is_established
        client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(cert))
        secure = scu.associate("127.0.0.1", port, ae_title="LUNGSITE", tls_args=(client, "127.0.0.1"))
        assert secure.is_established
        assert secure.send_c_echo().Status == 0x0000
        secure.release()
    finally:
        server.shutdown()
