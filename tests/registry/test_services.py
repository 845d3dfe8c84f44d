import hashlib

import pytest
from django.contrib.auth.models import Group
from django.core.files.uploadedfile import SimpleUploadedFile
from django.db.models import ProtectedError

from audit.models import AppendOnlyError
from registry.models import DEFAULT_CLASS_NAMES, ActivationEvent, ModelVersion
from registry.services import (
    ActivationError,
    RegistrationError,
    model_version_activate,
    model_version_register,
    model_version_rollback,
)
from registry.storage import serving_graph_read, weights_read, weights_storage
from tests.registry.conftest import (
    corrupt_stored_weights,
    dataparallel_checkpoint_bytes,
    hostile_pickle_bytes,
    stored_objects,
    variant_weights_bytes,
    wrong_outputs_bytes,
)

pytestmark = pytest.mark.django_db


def test_it_registers_good_weights_by_content(settings, clinician):
    data = variant_weights_bytes(1)
    version = model_version_register(
        data=data, version_name="v1", class_names=DEFAULT_CLASS_NAMES, auroc=0.81, user=clinician
    )
    sha = hashlib.sha256(data).hexdigest()
    assert version.sha256 == sha
    assert version.storage_path == f"weights/{sha}.pt"
    # The serving graph the workers open, written from the weights and stored by content beside them.
    assert version.serving_graph_path == f"serving/{version.serving_graph_sha256}.onnx"
    assert stored_objects(settings) == [version.serving_graph_path, f"weights/{sha}.pt"]
    assert weights_read(version) == data
    assert hashlib.sha256(serving_graph_read(version)).hexdigest() == version.serving_graph_sha256
    assert version.accuracy_auroc == 0.81
    assert version.preprocessing["input_size"] == 224
    assert version.created_by == clinician
    assert not version.is_active and version.activated_at is None


def test_it_accepts_an_uploaded_file():
    upload = SimpleUploadedFile("weights.pt", variant_weights_bytes(2))
    version = model_version_register(file=upload, version_name="uploaded", class_names=DEFAULT_CLASS_NAMES)
    assert version.sha256 == hashlib.sha256(variant_weights_bytes(2)).hexdigest()


def test_it_accepts_a_dataparallel_checkpoint():
    version = model_version_register(
        data=dataparallel_checkpoint_bytes(), version_name="dp", class_names=DEFAULT_CLASS_NAMES
    )
    activated = model_version_activate(version=version)
    assert activated.is_active


def test_it_refuses_the_wrong_number_of_outputs_leaving_nothing(settings):
    with pytest.raises(RegistrationError, match="5 outputs but 13 class names"):
        model_version_register(
            data=wrong_outputs_bytes(), version_name="bad", class_names=DEFAULT_CLASS_NAMES
        )
    assert not ModelVersion.objects.exists()
    assert stored_objects(settings) == []


def test_it_refuses_a_hostile_pickle_without_running_it(settings, tmp_path):
    marker = tmp_path / "pwned"
    with pytest.raises(RegistrationError, match="pickle"):
        model_version_register(
            data=hostile_pickle_bytes(marker), version_name="evil", class_names=DEFAULT_CLASS_NAMES
        )
    assert not marker.exists()
    assert not ModelVersion.objects.exists()
    assert stored_objects(settings) == []


def test_it_refuses_a_duplicate_name_and_stores_nothing_more(settings, register):
    first = register("same")
    with pytest.raises(RegistrationError, match="already exists"):
        register("same", data=variant_weights_bytes(99))
    assert ModelVersion.objects.count() == 1
    assert stored_objects(settings) == [first.serving_graph_path, first.storage_path]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"thresholds": {"Nope": 0.5}}, "classes the model does not have: Nope"),
        ({"thresholds": {"Edema": 1.5}}, "between 0 and 1"),
        ({"thresholds": {"Edema": True}}, "between 0 and 1"),
        ({"auroc": 1.2}, "AUROC must be a number between 0 and 1"),
        ({"auroc": float("nan")}, "AUROC"),
        ({"preprocessing": {"input_size": 224, "resize_to": 256}}, "Unknown preprocessing keys: resize_to"),
        ({"preprocessing": {"resize": "crop"}}, "resize must be one of: bilinear, skimage"),
        ({"preprocessing": {"crop": "top"}}, "crop must be one of: none, center"),
        ({"preprocessing": {"channels": 2}}, "channels must be 1 or 3"),
        ({"preprocessing": {"channels": 1}}, "mean must be a list of 1 numbers for 1 channel"),
        ({"preprocessing": {"value_range": [1024, -1024]}}, "value_range must be two numbers"),
        ({"preprocessing": {"profile": "chexpert"}}, "Unknown preprocessing profile 'chexpert'"),
        ({"preprocessing": {"std": [0, 1, 1]}}, "greater than 0"),
        ({"source": "keras"}, "Unknown weights source 'keras'"),
        ({"published_auroc": {"Edema": 0.8}}, "needs its source"),
        ({"published_auroc": {"Nope": 0.8}, "published_auroc_source": "a paper"}, "does not have: Nope"),
        ({"published_auroc": {"Edema": 1.8}, "published_auroc_source": "a paper"}, "between 0 and 1"),
        ({"published_auroc_source": "a paper"}, "without the AUROC values"),
        ({"version_name": "1234"}, "only digits"),
        ({"version_name": "  "}, "version name is required"),
        ({"class_names": DEFAULT_CLASS_NAMES[:-1] + ["Edema"]}, "must not repeat: Edema"),
        ({"class_names": DEFAULT_CLASS_NAMES[:-1] + ["a/b"]}, "Invalid class name"),
        ({"architecture": "vgg16"}, "Unknown architecture"),
    ],
)
def test_it_refuses_bad_metadata_before_storing(settings, kwargs, message):
    arguments = {"data": variant_weights_bytes(3), "version_name": "meta", "class_names": DEFAULT_CLASS_NAMES}
    arguments.update(kwargs)
    with pytest.raises(RegistrationError, match=message):
        model_version_register(**arguments)
    assert not ModelVersion.objects.exists()
    assert stored_objects(settings) == []


def test_it_keeps_valid_thresholds():
    version = model_version_register(
        data=variant_weights_bytes(4),
        version_name="thr",
        class_names=DEFAULT_CLASS_NAMES,
        thresholds={"Edema": 0.3, "Mass": 1},
    )
    assert version.thresholds == {"Edema": 0.3, "Mass": 1.0}
    assert version.threshold_for("Edema") == 0.3
    assert version.threshold_for("Nodule") == 0.5


def test_it_records_who_activated_what_replacing_which(register, model_admin, superuser):
    a, b = register("a"), register("b")
    model_version_activate(version=a, user=model_admin, via="command")
    model_version_activate(version=b, user=superuser, via="admin")
    a.refresh_from_db()
    b.refresh_from_db()
    assert b.is_active and not a.is_active
    events = list(ActivationEvent.objects.order_by("id"))
    assert [(e.version, e.previous, e.activated_by, e.via) for e in events] == [
        (a, None, model_admin, "command"),
        (b, a, superuser, "admin"),
    ]
    assert events[1].activated_at == b.activated_at


def test_it_shows_when_each_activation_ended(register):
    a, b = register("a"), register("b")
    model_version_activate(version=a)
    model_version_activate(version=b)
    first, second = ActivationEvent.objects.with_deactivated_at().order_by("id")
    assert first.deactivated_at == second.activated_at
    assert second.deactivated_at is None


def test_it_does_nothing_when_activating_the_active_version(starter_model):
    model_version_activate(version=starter_model)
    assert ActivationEvent.objects.count() == 1


def test_it_refuses_to_activate_weights_that_no_longer_match_their_sha256(starter_model, register):
    other = register("tampered")
    corrupt_stored_weights(other)
    with pytest.raises(ActivationError, match="do not match their sha256"):
        model_version_activate(version=other)
    assert ModelVersion.objects.get(is_active=True) == starter_model
    assert ActivationEvent.objects.count() == 1


def test_it_writes_the_serving_graph_of_an_older_version_when_activating_it(settings, register):
    version = register("older")
    graph_path, graph_sha256 = version.serving_graph_path, version.serving_graph_sha256
    # A row registered before serving graphs were stored: no graph, none in storage.
    weights_storage().delete(graph_path)
    ModelVersion.objects.filter(pk=version.pk).update(serving_graph_path="", serving_graph_sha256="")
    version.refresh_from_db()

    activated = model_version_activate(version=version)
    # Derived data, deterministic: the same weights give the same graph under the same name.
    assert (activated.serving_graph_path, activated.serving_graph_sha256) == (graph_path, graph_sha256)
    assert hashlib.sha256(serving_graph_read(activated)).hexdigest() == graph_sha256


def test_it_rewrites_a_damaged_serving_graph_when_activating(register):
    version = register("damaged-graph")
    with weights_storage().open(version.serving_graph_path, "rb") as handle:
        intact = handle.read()
    with open(weights_storage().path(version.serving_graph_path), "r+b") as handle:
        handle.seek(1000)
        handle.write(b"\x00corrupted\x00")
    activated = model_version_activate(version=version)
    assert serving_graph_read(activated) == intact


def test_it_refuses_to_activate_missing_weights(register):
    version = register("gone")
    weights_storage().delete(version.storage_path)
    with pytest.raises(ActivationError, match="missing from storage"):
        model_version_activate(version=version)
    assert not ModelVersion.objects.filter(is_active=True).exists()


def test_a_crashed_weights_checker_is_unavailable_not_refused(settings, register, monkeypatch):
    from engine.weights import ExportFailed
    from registry import services

    def crash(*args, **kwargs):
        raise ExportFailed("The weights checker failed (exit status -9).")

    older = register("older")
    weights_storage().delete(older.serving_graph_path)
    ModelVersion.objects.filter(pk=older.pk).update(serving_graph_path="", serving_graph_sha256="")
    older.refresh_from_db()
    before = stored_objects(settings)
    monkeypatch.setattr(services, "serving_graph_from_weights", crash)
    monkeypatch.setattr(services, "weights_prepare", crash)

    # Registration: "try again later", not "your file is bad", and nothing written.
    with pytest.raises(services.RegistrationUnavailable, match="exit status -9.*Nothing was registered"):
        model_version_register(
            data=variant_weights_bytes(7), version_name="v7", class_names=DEFAULT_CLASS_NAMES
        )
    assert not ModelVersion.objects.filter(version_name="v7").exists()
    assert stored_objects(settings) == before
    # Activation of a version whose graph must be written first: nothing changes.
    with pytest.raises(services.ActivationUnavailable, match="Cannot activate older now"):
        model_version_activate(version=older)
    assert not ModelVersion.objects.filter(is_active=True).exists()


def test_it_rolls_back_to_the_previous_version_and_back_again(register, model_admin):
    a, b = register("a"), register("b")
    model_version_activate(version=a)
    model_version_activate(version=b)
    assert model_version_rollback(user=model_admin, via="admin") == a
    assert ModelVersion.objects.get(is_active=True) == a
    event = ActivationEvent.objects.order_by("-id").first()
    assert (event.version, event.previous, event.reason, event.activated_by) == (
        a,
        b,
        "rollback",
        model_admin,
    )
    assert model_version_rollback() == b


def test_it_refuses_a_rollback_without_history(starter_model):
    with pytest.raises(ActivationError, match="no previous version"):
        model_version_rollback()


def test_it_refuses_a_rollback_with_nothing_active():
    with pytest.raises(ActivationError, match="No version is active"):
        model_version_rollback()


def test_it_keeps_the_history_append_only(starter_model):
    event = ActivationEvent.objects.get()
    event.reason = "rewritten"
    with pytest.raises(AppendOnlyError):
        event.save()
    with pytest.raises(AppendOnlyError):
        event.delete()
    with pytest.raises(AppendOnlyError):
        ActivationEvent.objects.update(reason="x")
    with pytest.raises(AppendOnlyError):
        ActivationEvent.objects.all().delete()
    assert ActivationEvent.objects.get().reason == ""


def test_it_refuses_to_delete_a_version_that_was_ever_active(register, starter_model):
    other = register("other")
    model_version_activate(version=other)
    starter_model.refresh_from_db()
    assert not starter_model.is_active
    with pytest.raises(ProtectedError):
        starter_model.delete()
    with pytest.raises(ProtectedError):
        ModelVersion.objects.filter(pk=starter_model.pk).delete()
    assert ModelVersion.objects.filter(pk=starter_model.pk).exists()


def test_it_deletes_a_version_that_never_served(register):
    version = register("unused")
    version.delete()
    assert not ModelVersion.objects.exists()


def test_it_lets_model_admins_and_auditors_read_the_history():
    def codenames(group):
        return set(Group.objects.get(name=group).permissions.values_list("codename", flat=True))

    assert "view_activationevent" in codenames("model-admin")
    assert "view_activationevent" in codenames("auditor")
    assert "view_activationevent" not in codenames("clinician")


def test_it_removes_the_stored_object_when_the_row_cannot_be_written(settings, monkeypatch):
    from django.db import IntegrityError

    def refuse(**kwargs):
        raise IntegrityError("UNIQUE constraint failed: models.version_name")

    monkeypatch.setattr(ModelVersion.objects, "create", refuse)
    with pytest.raises(RegistrationError, match="already exists"):
        model_version_register(
            data=variant_weights_bytes(5), version_name="race", class_names=DEFAULT_CLASS_NAMES
        )
    assert stored_objects(settings) == []


def test_it_has_postgres_refuse_changes_to_the_history(starter_model):
    from django.db import DatabaseError, connection, transaction

    if connection.vendor != "postgresql":
        pytest.skip("the append-only trigger exists on Postgres only (SQLite relies on the model layer)")
    for sql in ("UPDATE model_activations SET reason = 'x'", "DELETE FROM model_activations"):
        with (
            pytest.raises(DatabaseError, match="append-only"),
            transaction.atomic(),
            connection.cursor() as cursor,
        ):
            cursor.execute(sql)
    assert ActivationEvent.objects.count() == 1


def test_it_registers_nothing_when_the_weights_store_is_down(db, monkeypatch):
    from django.core.files.storage import storages

    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
    from registry.services import RegistrationUnavailable, model_version_register
    from tests.conftest import starter_weights_bytes

    def unreachable(*args, **kwargs):
        raise ConnectionError("storage host unreachable")

    monkeypatch.setattr(storages["models"], "save", unreachable)
    with pytest.raises(RegistrationUnavailable, match="weights store is unavailable"):
        model_version_register(
            data=starter_weights_bytes(), version_name="offline", class_names=DEFAULT_CLASS_NAMES
        )
    assert not ModelVersion.objects.exists()
