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


def test_it_writes_the_serving_graphs_of_versions_registered_before_them(register):
    from registry.storage import serving_graph_read, weights_storage

    report = run()
    assert report["serving_graphs_written"] == []  # the starter got its graph at registration
    older = register("older")
    expected = older.serving_graph_sha256
    weights_storage().delete(older.serving_graph_path)
    ModelVersion.objects.filter(pk=older.pk).update(serving_graph_path="", serving_graph_sha256="")
    broken = register("broken")
    ModelVersion.objects.filter(pk=broken.pk).update(serving_graph_path="", serving_graph_sha256="")
    weights_storage().delete(broken.storage_path)

    report = run()
    by_name = {entry["version_name"]: entry for entry in report["serving_graphs_written"]}
    assert by_name["older"]["written"] is True
    assert by_name["broken"]["written"] is False and "missing from storage" in by_name["broken"]["error"]
    older.refresh_from_db()
    assert older.serving_graph_sha256 == expected and serving_graph_read(older)


def test_it_is_idempotent():
    run()
    assert run()["starter_model"] is None
    assert ModelVersion.objects.count() == 1
    assert ActivationEvent.objects.count() == 1
