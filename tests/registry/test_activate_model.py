import io
import json

import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from registry.models import ActivationEvent, ModelVersion
from tests.registry.conftest import corrupt_stored_weights

pytestmark = pytest.mark.django_db


def run(*args) -> dict:
    out = io.StringIO()
    call_command("activate_model", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_activates_by_name(starter_model, register):
    other = register("next")
    result = run("next")
    assert result["activated"]["id"] == other.pk
    assert result["previous"]["id"] == starter_model.pk
    assert result["changed"] is True
    assert ModelVersion.objects.get(is_active=True) == other
    assert ActivationEvent.objects.order_by("-id").first().via == "command"


def test_it_activates_by_id(register):
    version = register("by-id")
    result = run(str(version.pk))
    assert result["activated"]["version_name"] == "by-id"
    assert result["previous"] is None


def test_it_reports_no_change_for_the_active_version(starter_model):
    result = run(starter_model.version_name)
    assert result["changed"] is False
    assert ActivationEvent.objects.count() == 1


def test_it_refuses_an_unknown_version():
    with pytest.raises(CommandError, match="No model version with id or name 'ghost'"):
        run("ghost")


def test_it_refuses_weights_whose_sha256_does_not_match(starter_model, register):
    other = register("tampered")
    corrupt_stored_weights(other)
    with pytest.raises(CommandError) as info:
        run("tampered")
    assert "do not match their sha256" in str(info.value)
    assert "\n" not in str(info.value)
    assert ModelVersion.objects.get(is_active=True) == starter_model


def test_it_rolls_back(starter_model, register):
    register("next")
    run("next")
    result = run("--rollback")
    assert result["activated"]["id"] == starter_model.pk
    assert result["previous"]["version_name"] == "next"


def test_it_refuses_a_rollback_without_history(starter_model):
    with pytest.raises(CommandError, match="no previous version"):
        run("--rollback")
