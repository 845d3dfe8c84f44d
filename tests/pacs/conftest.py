"""Fixtures of the PACS tests: the real chest DICOM, a "pacs" service user with a token, and
lungsite's C-STORE receiver on a free loopback port."""

from __future__ import annotations

import pytest

from tests.conftest import shared_data_path
from tests.reliability.liveserver import free_port

CHEST = ("pydicom_data", "RG1_UNCR.dcm")  # CR chest PA, 16-bit, with a patient name, ID and birth date


@pytest.fixture
def chest_dicom() -> bytes:
    return shared_data_path(*CHEST).read_bytes()


@pytest.fixture
def pacs_user(db, django_user_model):
    """A service account that may send studies, with its API token."""
    from django.contrib.auth.models import Permission
    from rest_framework.authtoken.models import Token

    user = django_user_model.objects.create_user(username="pacs", password="pw-pacs-service")
    user.user_permissions.add(
        Permission.objects.get(content_type__app_label="pacs", codename="add_receivedinstance")
    )
    user.token = Token.objects.create(user=user).key
    return user


@pytest.fixture
def dicom_listener(settings):
    """lungsite's C-STORE receiver (pacs.listener) in this process: (ae_title, port)."""
    from pacs.listener import listener_start

    port = free_port()
    server = listener_start(host="127.0.0.1", port=port, block=False)
    yield settings.LUNGSITE_DICOM_AE_TITLE, port
    server.shutdown()


@pytest.fixture(autouse=True)
def _analysis_in_the_test_process(settings):
    """Received instances are analysed in the test process (Celery's eager mode), as if a worker
    took each task at once; test_celery_worker.py runs a real worker instead."""
    from lungsite.celery import app

    previous = app.conf.task_always_eager
    settings.CELERY_TASK_ALWAYS_EAGER = True
    app.conf.task_always_eager = True
    yield
    app.conf.task_always_eager = previous
