"""Fixtures shared by the whole suite: fixed users per role, storage in a temp folder, the real
images of ../shared/data, and the starter model."""

import functools
import os
from pathlib import Path

import pytest
from django.contrib.auth.models import Group

ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("LUNGSITE_SHARED_DATA", ROOT.parent / "shared" / "data"))


def shared_data_path(*parts: str) -> Path:
    """A file under ../shared/data; the test skips, saying why, when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real test data not found: {path} (the ../shared/data folder is absent)")
    return path


def tamper_sql(sql: str, params=()) -> None:
    """Changes the prediction log as someone with a database connection would: on Postgres past
    the append-only trigger."""
    from django.db import connection, transaction

    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Fire the deferred foreign-key checks of this test's inserts: ALTER TABLE refuses to run
            # with trigger events pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE predictions DISABLE TRIGGER predictions_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE predictions ENABLE TRIGGER predictions_append_only")


@pytest.fixture
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real test data not found: {SHARED_DATA} (the ../shared/data folder is absent)")
    return SHARED_DATA


@pytest.fixture(autouse=True)
def _isolated_storage(settings, tmp_path):
    """Every test gets its own storage folders, and plain static files (no collectstatic needed)."""
    storages = dict(settings.STORAGES)
    for alias, bucket in (("models", "models"), ("xray_images", "xray-images")):
        if storages[alias]["BACKEND"] == "django.core.files.storage.FileSystemStorage":
            storages[alias] = {
                "BACKEND": "django.core.files.storage.FileSystemStorage",
                "OPTIONS": {"location": tmp_path / "storage" / bucket, "base_url": None},
            }
    storages["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    settings.STORAGES = storages
    settings.SECURE_SSL_REDIRECT = False
    settings.SESSION_COOKIE_SECURE = False
    settings.CSRF_COOKIE_SECURE = False
    settings.AXES_ENABLED = True
    # The evaluation gate (issue 23) would refuse the unevaluated versions most tests activate;
    # tests/registry/test_activation_gate.py turns it on.
    settings.LUNGSITE_ACTIVATION_GATE = False
    yield


@pytest.fixture(autouse=True)
def _fresh_model_cache():
    """Each test starts like a fresh process: row ids repeat from test to test (their rows roll
    back), so a model cache kept between tests could serve, or remember a failed load of, another
    test's version."""
    from registry import cache

    cache.clear()
    yield
    cache.clear()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op torch thread for a module's tests (`pytest.mark.usefixtures`): two threads on
    two busy shared cores made forward passes and loads ~10x slower (measured)."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def eager_jobs(django_capture_on_commit_callbacks):
    """`with eager_jobs(): ...` runs the tasks queued inside the block in the test process when the
    block ends. The queueing waits for the commit as in production; the test's transaction never
    commits, so the callbacks captured in the block are run at its end."""
    from lungsite.celery import app

    previous = app.conf.task_always_eager
    app.conf.task_always_eager = True
    yield lambda: django_capture_on_commit_callbacks(execute=True)
    app.conf.task_always_eager = previous


@pytest.fixture
def api(db):
    """api(user) -> an APIClient sending that user's token; api() -> anonymous."""
    from rest_framework.authtoken.models import Token
    from rest_framework.test import APIClient

    def make(user=None) -> APIClient:
        client = APIClient()
        if user is not None:
            token, _ = Token.objects.get_or_create(user=user)
            client.credentials(HTTP_AUTHORIZATION=f"Token {token.key}")
        return client

    return make


@functools.cache
def starter_weights_bytes() -> bytes:
    from registry.management.commands.bootstrap import starter_weights

    return starter_weights()


@pytest.fixture
def starter_model(db):
    """The untrained starter, registered and active, as `manage.py bootstrap` makes it."""
    from registry.management.commands.bootstrap import STARTER_VERSION_NAME
    from registry.models import DEFAULT_CLASS_NAMES
    from registry.services import model_version_activate, model_version_register

    version = model_version_register(
        data=starter_weights_bytes(),
        version_name=STARTER_VERSION_NAME,
        class_names=DEFAULT_CLASS_NAMES,
        untrained=True,
        notes="UNTRAINED test starter",
    )
    return model_version_activate(version=version, via="bootstrap")


def _ensure_roles() -> None:
    """The roles come from a data migration; a transactional test (live server) flushes them, so
    tests that run after one put them back the same way the migration made them."""
    if Group.objects.filter(name__in=["clinician", "auditor", "model-admin"]).count() == 3:
        return
    from importlib import import_module

    from django.contrib.auth.models import Permission

    # A flush re-creates permissions (post_migrate) but not the groups of the data migrations.
    roles = {
        name: list(perms) for name, perms in import_module("registry.migrations.0002_roles").ROLES.items()
    }
    for name in import_module("registry.migrations.0003_activationevent").ROLES_VIEWING_HISTORY:
        roles[name].append(("registry", "view_activationevent"))
    learning = import_module("learning.migrations.0002_model_admin_views_training_runs_and_evaluations")
    roles[learning.ROLE] += learning.PERMISSIONS
    for name, perms in roles.items():
        group, _ = Group.objects.get_or_create(name=name)
        for app_label, codename in perms:
            group.permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )


def _user(django_user_model, username: str, group: str | None = None, **extra):
    _ensure_roles()
    user = django_user_model.objects.create_user(username=username, password="pw-" + username, **extra)
    if group:
        user.groups.add(Group.objects.get(name=group))
    return user


@pytest.fixture
def clinician(db, django_user_model):
    return _user(django_user_model, "alice", "clinician")


@pytest.fixture
def other_clinician(db, django_user_model):
    return _user(django_user_model, "bob", "clinician")


@pytest.fixture
def auditor(db, django_user_model):
    return _user(django_user_model, "carol", "auditor")


@pytest.fixture
def model_admin(db, django_user_model):
    return _user(django_user_model, "dave", "model-admin", is_staff=True)


@pytest.fixture
def superuser(db, django_user_model):
    return django_user_model.objects.create_superuser(username="root", password="pw-root")
