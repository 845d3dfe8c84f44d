"""`manage.py check --deploy --fail-level WARNING` is clean with production settings (DJANGO_DEBUG=0,
a real secret key), run as an operator would: a fresh process with only the environment set."""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _production_env(tmp_path: Path) -> dict:
    env = {key: value for key, value in os.environ.items() if not key.startswith(("DJANGO_", "LUNGSITE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="lungsite.settings",
        DJANGO_DEBUG="0",
        DJANGO_SECRET_KEY=secrets.token_urlsafe(64),
        DJANGO_ALLOWED_HOSTS="lungsite.example.org",
        LUNGSITE_DATA_DIR=str(tmp_path),
    )
    return env


def _json_printed_by(script: str, tmp_path: Path):
    """Runs `script` in a fresh interpreter with the production environment; the JSON of its last
    line of output."""
    done = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=_production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_check_deploy_is_clean_with_production_settings(tmp_path):
    done = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT,
        env=_production_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout, done.stdout + done.stderr


def test_production_settings_are_the_safe_ones(tmp_path):
    script = (
        "import json, django; django.setup(); from django.conf import settings as s; print(json.dumps({"
        "k: getattr(s, k) for k in ('DEBUG', 'SECURE_SSL_REDIRECT', 'SESSION_COOKIE_SECURE', "
        "'CSRF_COOKIE_SECURE', 'SECURE_HSTS_SECONDS', 'SESSION_COOKIE_HTTPONLY', 'X_FRAME_OPTIONS', "
        "'SECURE_CONTENT_TYPE_NOSNIFF', 'AXES_FAILURE_LIMIT')}))"
    )
    values = _json_printed_by(script, tmp_path)
    assert values == {
        "DEBUG": False,
        "SECURE_SSL_REDIRECT": True,
        "SESSION_COOKIE_SECURE": True,
        "CSRF_COOKIE_SECURE": True,
        "SECURE_HSTS_SECONDS": values["SECURE_HSTS_SECONDS"],
        "SESSION_COOKIE_HTTPONLY": True,
        "X_FRAME_OPTIONS": "DENY",
        "SECURE_CONTENT_TYPE_NOSNIFF": True,
        "AXES_FAILURE_LIMIT": 5,
    }
    assert values["SECURE_HSTS_SECONDS"] >= 31_536_000


def test_a_gunicorn_worker_readies_itself_before_its_first_request(tmp_path):
    """gunicorn.conf.py's post_worker_init, run in a fresh interpreter as a worker would run it:
    its decoding process is running, and the objects that exist by then are frozen out of the
    garbage collector's walks."""
    script = (
        "import gc, json, runpy\n"
        "conf = runpy.run_path('gunicorn.conf.py')\n"
        "import django; django.setup()\n"
        "before = gc.get_freeze_count()\n"
        "conf['post_worker_init'](None)\n"
        "import multiprocessing\n"
        "print(json.dumps({'before': before, 'frozen': gc.get_freeze_count(),\n"
        "    'decoders': [p.name for p in multiprocessing.active_children()]}))\n"
    )
    report = _json_printed_by(script, tmp_path)
    assert report["before"] == 0 and report["frozen"] > 50_000
    assert report["decoders"] == ["lungsite-decode"]
