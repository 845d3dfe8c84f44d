import io
import json

import pytest
from django.core.management import call_command

from registry.management.commands.bootstrap import STARTER_VERSION_NAME
from registry.models import ActivationEvent, ModelVersion

pytestmark = pytest.mark.django_db


def run() -> dict:
    out = io.StringIO()
    call_command("bootstrap", stdout=out)
    return json.loads(out.getvalue())


def test_it_activates_the_starter_and_records_it_in_the_history():
    report = run()
    version = ModelVersion.objects.get()
    assert report["starter_model"]["id"] == version.pk
    assert version.version_name == STARTER_VERSION_NAME
    assert version.is_active and version.untrained
    event = ActivationEvent.objects.get()
    assert (event.version, event.previous, event.via, event.activated_by) == (
        version,
        None,
        "bootstrap",
        None,
    )


def test_it_is_idempotent():
    run()
    assert run()["starter_model"] is None
    assert ModelVersion.objects.count() == 1
    assert ActivationEvent.objects.count() == 1
