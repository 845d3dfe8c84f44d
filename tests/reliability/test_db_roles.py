"""Separate database roles, deployed as docs/audit.md says: a scratch database owned by an owner
role that runs `manage.py migrate --database owner`, and the app connecting as a role that may only
SELECT and INSERT the logs. Postgres only; needs a connection allowed to create roles (CI's)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.db import connection

ROOT = Path(__file__).resolve().parents[2]
AUDIT_KEY = "deployment-test-audit-key-0123456789abcdef"

pytestmark = pytest.mark.skipif(connection.vendor != "postgresql", reason="database roles are Postgres's")

APP_SCRIPT = r"""
import json
import django
django.setup()
from django.contrib.auth import get_user_model
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import call_command
from django.db import connection, transaction
from django.utils import timezone

from audit.integrity import _public_hash, chain_body, prediction_create_chained
from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

out = {"refused": {}, "allowed": []}
users = [get_user_model().objects.create_user(username=name, password="x") for name in ("alice", "bob")]
version = ModelVersion.objects.create(
    version_name="roles", storage_path="weights/r.pt", sha256="d" * 64, class_names=DEFAULT_CLASS_NAMES
)
ModelVersion.objects.filter(pk=version.pk).update(notes="the app may change the registry")
users[0].last_login = timezone.now()
users[0].save()
for n in range(3):
    name = storages["xray_images"].save(f"images/roles/{n}.png", ContentFile(b"image %d" % n))
    row = prediction_create_chained(
        stored_data=b"image %d" % n, model=version, image_url=name, results_json={"findings": []},
        image_sha256=f"{n:064x}", user=users[0], source="api",
    )
out["chain_version"] = row.chain_version

STATEMENTS = {
    "update_log": "UPDATE predictions SET latency_ms = 1",
    "delete_log": "DELETE FROM predictions",
    "truncate_log": "TRUNCATE predictions",
    "disable_trigger": "ALTER TABLE predictions DISABLE TRIGGER predictions_append_only",
    "drop_log": "DROP TABLE predictions",
    "move_genesis": "UPDATE audit_chain_genesis SET keyed_from_id = 1000000",
    "delete_labels": "DELETE FROM prediction_labels",
    "delete_activations": "DELETE FROM model_activations",
    "delete_idempotency_keys": "DELETE FROM prediction_idempotency_keys",
    "create_table": "CREATE TABLE intruder (id int)",
    "forget_migrations": "DELETE FROM django_migrations",
}
for name, sql in STATEMENTS.items():
    try:
        with transaction.atomic(), connection.cursor() as cursor:
            cursor.execute(sql)
        out["allowed"].append(name)
    except Exception as exc:
        out["refused"][name] = str(exc).splitlines()[0]

# What this role can still do to the log: INSERT a row, which verify_audit must catch.
forged = Prediction(
    chain_version=2, created_at=timezone.now(), model=version, image_url="images/roles/0.png",
    results_json={"findings": []}, image_sha256="e" * 64, user=users[1], source="api",
    prev_hash=row.chain_hash,
)
forged.chain_hash = _public_hash(forged.prev_hash, chain_body(forged))
forged.save(force_insert=True)
out["forged_id"] = forged.pk
try:
    call_command("verify_audit", "--no-progress", "--skip-images", stdout=open("/dev/null", "w"))
    out["verify"] = "ok"
except Exception as exc:
    out["verify"] = str(exc)
print(json.dumps(out))
"""


def _admin():
    import psycopg

    settings = connection.settings_dict
    conn = psycopg.connect(
        host=settings["HOST"] or "127.0.0.1",
        port=settings["PORT"] or 5432,
        user=settings["USER"],
        password=settings["PASSWORD"] or None,
        dbname="postgres",
        autocommit=True,
    )
    return conn


def _url(role: str, database: str) -> str:
    settings = connection.settings_dict
    return f"postgres://{role}@{settings['HOST'] or '127.0.0.1'}:{settings['PORT'] or 5432}/{database}"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """A database owned by an owner role, migrated by it; the env of the app's role."""
    admin = _admin()
    can = admin.execute(
        "SELECT rolsuper OR rolcreaterole FROM pg_roles WHERE rolname = current_user"
    ).fetchone()
    if not can or not can[0]:
        admin.close()
        pytest.skip("the test database's user may not create roles")
    suffix = f"{os.getpid()}"
    owner, app, database = f"lungsite_owner_{suffix}", f"lungsite_app_{suffix}", f"lungsite_roles_{suffix}"
    for role in (owner, app):
        admin.execute(f"DROP ROLE IF EXISTS {role}")
    admin.execute(f"DROP DATABASE IF EXISTS {database}")
    admin.execute(f"CREATE ROLE {owner} LOGIN")
    admin.execute(f"CREATE ROLE {app} LOGIN")
    admin.execute(f"CREATE DATABASE {database} OWNER {owner}")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DATABASE_", "LUNGSITE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="lungsite.settings",
        DJANGO_SECRET_KEY="roles-test",
        DATABASE_URL=_url(app, database),
        DATABASE_MIGRATE_URL=_url(owner, database),
        LUNGSITE_DATA_DIR=str(tmp_path_factory.mktemp("roles-data")),
        LUNGSITE_AUDIT_KEY=AUDIT_KEY,
    )
    try:
        migrated = subprocess.run(
            [sys.executable, "manage.py", "migrate", "--database", "owner", "--no-input"],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert migrated.returncode == 0, migrated.stdout[-2000:] + migrated.stderr[-3000:]
        yield {"env": env, "owner": owner, "app": app, "database": database}
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")
        for role in (app, owner):
            admin.execute(f"DROP ROLE IF EXISTS {role}")
        admin.close()


def _as_app(deployment, script: str) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=deployment["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_the_app_role_may_only_read_and_append_the_logs(deployment):
    import psycopg

    found = _as_app(deployment, APP_SCRIPT)
    assert found["chain_version"] == 3
    assert found["allowed"] == []
    refused = found["refused"]
    for name in (
        "update_log",
        "delete_log",
        "truncate_log",
        "move_genesis",
        "delete_labels",
        "delete_activations",
        "delete_idempotency_keys",
        "forget_migrations",
        "create_table",
    ):
        # Refused by the privileges of the role, before any trigger is asked.
        assert "permission denied" in refused[name], (name, refused[name])
    for name in ("disable_trigger", "drop_log"):
        assert "must be owner" in refused[name], (name, refused[name])
    # The one thing it can do to the log, appending a row made without the key, is found.
    assert "row of chain version 2" in found["verify"] and "where every row must be keyed" in found["verify"]

    # The owner can still switch the trigger off and change a row: seen by verify_audit.
    with psycopg.connect(_url(deployment["owner"], deployment["database"]), autocommit=True) as owner:
        owner.execute("ALTER TABLE predictions DISABLE TRIGGER predictions_append_only")
        owner.execute("DELETE FROM predictions WHERE id = %s", [found["forged_id"]])
        owner.execute(
            "UPDATE predictions SET user_id = (SELECT max(id) FROM auth_user) "
            "WHERE id = (SELECT min(id) FROM predictions)"
        )
        owner.execute("ALTER TABLE predictions ENABLE TRIGGER predictions_append_only")
    verified = subprocess.run(
        [sys.executable, "manage.py", "verify_audit", "--no-progress", "--skip-images", "--no-checkpoint"],
        cwd=ROOT,
        env=deployment["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert verified.returncode == 1
    report = json.loads(verified.stdout.strip().splitlines()[-1])
    assert report["first_break"]["kind"] == "altered" and report["breaks"] == 1, report


def test_migrate_as_the_owner_keeps_the_app_roles_privileges(deployment):
    """A second migrate (as after an upgrade) sets the same privileges again, from the models."""
    import psycopg

    again = subprocess.run(
        [sys.executable, "manage.py", "migrate", "--database", "owner", "--no-input"],
        cwd=ROOT,
        env=deployment["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-2000:]
    with psycopg.connect(_url(deployment["owner"], deployment["database"])) as owner:
        rows = owner.execute(
            "SELECT table_name, string_agg(privilege_type, ',' ORDER BY privilege_type) "
            "FROM information_schema.role_table_grants WHERE grantee = %s GROUP BY table_name",
            [deployment["app"]],
        ).fetchall()
    grants = dict(rows)
    assert grants["predictions"] == "INSERT,SELECT"
    assert grants["prediction_labels"] == grants["model_activations"] == "INSERT,SELECT"
    assert grants["prediction_idempotency_keys"] == "INSERT,SELECT"
    assert grants["audit_chain_genesis"] == grants["django_migrations"] == "SELECT"
    assert grants["models"] == grants["auth_user"] == "DELETE,INSERT,SELECT,UPDATE"
