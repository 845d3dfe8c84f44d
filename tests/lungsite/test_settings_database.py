"""Settings read from the environment (DATABASE_URL, SUPABASE_*). Settings are module-level, so each
case imports them in a fresh interpreter with the variables set and prints what matters as JSON."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json
# No django.setup(): the apps (and torch) are not needed to read settings or build connect params.
from django.conf import settings
from django.db import connections

db = connections.settings["default"]  # with Django's defaults filled in
out = {
    "ENGINE": db["ENGINE"],
    "PORT": db.get("PORT"),
    "OPTIONS": {k: v for k, v in db["OPTIONS"].items() if isinstance(v, (str, int, type(None)))},
    "CONN_MAX_AGE": db["CONN_MAX_AGE"],
    "DISABLE_SERVER_SIDE_CURSORS": db.get("DISABLE_SERVER_SIDE_CURSORS", False),
    "STORAGES": {alias: settings.STORAGES[alias] for alias in ("models", "xray_images")},
    "SIGNED_URL_SECONDS": settings.LUNGSITE_SIGNED_URL_SECONDS,
    "CACHE": {k: settings.CACHES["default"].get(k) for k in ("BACKEND", "LOCATION", "KEY_PREFIX")},
}
if "postgresql" in db["ENGINE"]:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3
    # What Django hands to psycopg.connect (no connection is opened).
    params = connections["default"].get_connection_params()
    out["psycopg3"] = is_psycopg3
    out["connect"] = {
        k: params.get(k, "absent")
        for k in (
            "prepare_threshold", "sslmode", "connect_timeout", "options", "keepalives", "tcp_user_timeout"
        )
    }
print(json.dumps(out, default=str))
"""


def settings_with(tmp_path, **env) -> dict:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("DATABASE_URL", "SUPABASE_", "DJANGO_", "LUNGSITE_"))
    }
    clean.update(
        DJANGO_SETTINGS_MODULE="lungsite.settings",
        DJANGO_SECRET_KEY="test-secret",
        LUNGSITE_DATA_DIR=str(tmp_path),
        **env,
    )
    result = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, env=clean, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_it_uses_sqlite_and_local_files_when_nothing_is_set(tmp_path):
    found = settings_with(tmp_path)

    assert found["ENGINE"] == "django.db.backends.sqlite3"
    # Connections are kept between requests on SQLite too: opening one (and its WAL pragma) per
    # request cost about 1.5 ms of every prediction at 4 clients.
    assert found["CONN_MAX_AGE"] == 60
    # Throttle counts per process unless LUNGSITE_CACHE_URL names a Redis server.
    assert found["CACHE"]["BACKEND"] == "django.core.cache.backends.locmem.LocMemCache"
    for alias, bucket in (("models", "models"), ("xray_images", "xray-images")):
        assert found["STORAGES"][alias]["BACKEND"] == "django.core.files.storage.FileSystemStorage"
        assert found["STORAGES"][alias]["OPTIONS"]["location"] == str(tmp_path / "storage" / bucket)


def test_it_uses_psycopg_with_every_wait_bounded_on_the_session_pooler(tmp_path):
    """Supavisor's session mode (like a direct connection) keeps one server connection per client:
    statement_timeout goes in the startup options. Nothing is prepared on any port."""
    found = settings_with(
        tmp_path,
        DATABASE_URL="postgresql://postgres.abcd:secret@aws-0-eu-central-1.pooler.supabase.com:5432/postgres"
        "?sslmode=require",
    )

    assert found["ENGINE"] == "django.db.backends.postgresql"
    assert found["psycopg3"] is True
    assert found["connect"] == {
        "prepare_threshold": None,
        "sslmode": "require",
        "connect_timeout": 5,
        "options": "-c statement_timeout=5000",
        "keepalives": 1,
        "tcp_user_timeout": 10_000,
    }
    assert found["CONN_MAX_AGE"] == 60
    assert found["DISABLE_SERVER_SIDE_CURSORS"] is False


def test_it_adapts_to_the_transaction_pooler(tmp_path):
    found = settings_with(
        tmp_path,
        DATABASE_URL="postgresql://postgres.abcd:secret@aws-0-eu-central-1.pooler.supabase.com:6543/postgres"
        "?sslmode=require",
        DJANGO_CONN_MAX_AGE="600",
    )

    assert found["PORT"] == 6543
    assert found["DISABLE_SERVER_SIDE_CURSORS"] is True
    assert found["CONN_MAX_AGE"] == 0
    assert found["connect"]["prepare_threshold"] is None
    assert found["connect"]["sslmode"] == "require"
    # The pooler refuses startup options; the client-side deadline (common.db_deadline) stays.
    assert found["connect"]["options"] == "absent"


def test_it_honours_the_connection_settings(tmp_path):
    found = settings_with(
        tmp_path,
        DATABASE_URL="postgres://u:p@db.abcd.supabase.co:5432/postgres?sslmode=verify-full",
        DJANGO_CONN_MAX_AGE="0",
        DJANGO_DB_CONNECT_TIMEOUT="9",
        LUNGSITE_DB_STATEMENT_TIMEOUT_S="12",
        LUNGSITE_DB_TCP_USER_TIMEOUT_S="4",
    )

    assert found["connect"]["connect_timeout"] == 9
    assert found["connect"]["sslmode"] == "verify-full"
    assert found["connect"]["options"] == "-c statement_timeout=12000"
    assert found["connect"]["tcp_user_timeout"] == 4000
    assert found["CONN_MAX_AGE"] == 0


def test_a_zero_statement_timeout_sets_none(tmp_path):
    found = settings_with(
        tmp_path, DATABASE_URL="postgres://u:p@db.example:5432/postgres", LUNGSITE_DB_STATEMENT_TIMEOUT_S="0"
    )

    assert found["connect"]["options"] == "absent"


@pytest.mark.parametrize("missing", ["SUPABASE_URL", "SUPABASE_KEY"])
def test_it_needs_both_supabase_variables(tmp_path, missing):
    env = {"SUPABASE_URL": "https://abcd.supabase.co", "SUPABASE_KEY": "service-role"}
    env.pop(missing)
    found = settings_with(tmp_path, **env)

    assert found["STORAGES"]["models"]["BACKEND"] == "django.core.files.storage.FileSystemStorage"


def test_it_selects_supabase_buckets_when_configured(tmp_path):
    found = settings_with(
        tmp_path,
        SUPABASE_URL="https://abcd.supabase.co",
        SUPABASE_KEY="service-role",
        LUNGSITE_SIGNED_URL_SECONDS="60",
    )

    assert found["STORAGES"] == {
        "models": {"BACKEND": "common.supabase_storage.SupabaseStorage", "OPTIONS": {"bucket": "models"}},
        "xray_images": {
            "BACKEND": "common.supabase_storage.SupabaseStorage",
            "OPTIONS": {"bucket": "xray-images"},
        },
    }
    assert found["SIGNED_URL_SECONDS"] == 60


def test_it_shares_the_throttle_counts_through_redis_when_asked(tmp_path):
    found = settings_with(tmp_path, LUNGSITE_CACHE_URL="rediss://:secret@cache.example.org:6380/2")

    assert found["CACHE"] == {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": "rediss://:secret@cache.example.org:6380/2",
        "KEY_PREFIX": "lungsite",
    }


OWNER_PROBE = """
import json
from django.db import connections
print(json.dumps({alias: {k: connections.settings[alias].get(k) for k in ("USER", "NAME", "TEST")}
    | {"options": connections.settings[alias]["OPTIONS"].get("options")} for alias in connections.settings}))
"""


def test_a_migrate_url_adds_the_owner_alias_for_migrate(tmp_path):
    """DATABASE_MIGRATE_URL names the tables' owner as the alias `owner` (`migrate --database owner`);
    the app's connections stay on DATABASE_URL's role."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "LUNGSITE_", "DJANGO_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="lungsite.settings",
        DJANGO_SECRET_KEY="test-secret",
        LUNGSITE_DATA_DIR=str(tmp_path),
        DATABASE_URL="postgres://lungsite_app:p@db.example:5432/lungsite",
        DATABASE_MIGRATE_URL="postgres://lungsite_owner:q@db.example:5432/lungsite",
    )
    done = subprocess.run(
        [sys.executable, "-c", OWNER_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout.strip().splitlines()[-1])

    assert found["default"]["USER"] == "lungsite_app"
    assert found["default"]["options"] == "-c statement_timeout=5000"
    assert found["owner"]["USER"] == "lungsite_owner" and found["owner"]["NAME"] == "lungsite"
    assert found["owner"]["options"] is None  # a migration may run past the app's statement timeout
    assert found["owner"]["TEST"]["MIRROR"] == "default"  # tests migrate one database

    env.pop("DATABASE_MIGRATE_URL")
    done = subprocess.run(
        [sys.executable, "-c", OWNER_PROBE], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert list(json.loads(done.stdout.strip().splitlines()[-1])) == ["default"]
