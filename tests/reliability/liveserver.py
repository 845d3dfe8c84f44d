"""A real lungsite on loopback for the fault and load tests: a scratch Postgres database, a data
folder, and gunicorn with the project's gunicorn.conf.py, all removed afterwards.

`python -m tests.reliability.liveserver setup [--second-weights PATH]` (run by `prepared_site`
with DATABASE_URL and LUNGSITE_DATA_DIR set) migrates, collects static files, bootstraps the
starter model, registers a second version if asked, creates a clinician and a model admin with
tokens and a session, and prints what the test needs as JSON. One process does it all, so torch and
Django are imported once.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = sys.executable
SECOND_VERSION_NAME = "starter-bias-shifted"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_params() -> dict:
    """Connection parameters of the database the test run uses (settings.DATABASES["default"])."""
    from django.db import connection

    settings = connection.settings_dict
    return {
        "host": settings["HOST"] or "127.0.0.1",
        "port": int(settings["PORT"] or 5432),
        "user": settings["USER"] or "postgres",
        "password": settings["PASSWORD"] or "",
    }


def database_url(params: dict, name: str, port: int | None = None) -> str:
    from urllib.parse import quote

    auth = quote(params["user"]) + (":" + quote(params["password"]) if params["password"] else "")
    return f"postgres://{auth}@{params['host']}:{port or params['port']}/{name}"


@contextlib.contextmanager
def scratch_database() -> Iterator[tuple[dict, str]]:
    """A new empty database on the test server, dropped (connections and all) at the end."""
    import psycopg

    params = postgres_params()
    name = f"lungsite_rel_{os.getpid()}_{secrets.token_hex(4)}"
    admin = dict(params, dbname="postgres", autocommit=True, connect_timeout=5)
    with psycopg.connect(**admin) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        yield params, name
    finally:
        with psycopg.connect(**admin) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def site_env(database: str, data_dir: Path, **extra: str) -> dict:
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("DJANGO_", "LUNGSITE_", "GUNICORN_"))
    }
    env.pop("SUPABASE_URL", None)
    env.pop("SUPABASE_KEY", None)
    env.update(
        DATABASE_URL=database,
        LUNGSITE_DATA_DIR=str(data_dir),
        DJANGO_DEBUG="0",
        DJANGO_HTTPS="0",  # loopback, no TLS
        DJANGO_SECRET_KEY=secrets.token_urlsafe(50),
        DJANGO_ALLOWED_HOSTS="127.0.0.1,localhost",
        LUNGSITE_TORCH_THREADS="1",
        OMP_NUM_THREADS="1",
        LUNGSITE_LOG_LEVEL="WARNING",
        PYTHONDONTWRITEBYTECODE="1",
        # The versions these servers swap between are never evaluated; the activation gate has its
        # own tests (tests/registry/test_activation_gate.py).
        LUNGSITE_ACTIVATION_GATE="0",
    )
    env.update(extra)
    return env


def prepared_site(env: dict, *, second_weights: Path | None = None, timeout: float = 240) -> dict:
    args = [PYTHON, "-m", "tests.reliability.liveserver", "setup"]
    if second_weights is not None:
        args += ["--second-weights", str(second_weights)]
    done = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(
            f"site setup failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
        )
    return json.loads(done.stdout.strip().splitlines()[-1])


def second_weights_bytes() -> bytes:
    """The starter's weights with every classifier bias shifted: another version, other outputs."""
    import io

    import torch

    from registry.management.commands.bootstrap import starter_weights

    state = torch.load(io.BytesIO(starter_weights()), weights_only=True)
    state = state.get("state_dict", state)
    state["classifier.bias"] = state["classifier.bias"] + 1.5
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


class Gunicorn:
    """gunicorn with the project's gunicorn.conf.py on 127.0.0.1:port; stop() kills its group."""

    def __init__(self, env: dict, *, workers: int, threads: int = 2, log: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        env = dict(
            env,
            GUNICORN_BIND=f"127.0.0.1:{self.port}",
            GUNICORN_WORKERS=str(workers),
            GUNICORN_THREADS=str(threads),
            GUNICORN_MAX_REQUESTS="0",
            GUNICORN_LOG_LEVEL="warning",
        )
        self._log_handle = open(log, "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            [PYTHON, "-m", "gunicorn", "-c", str(ROOT / "gunicorn.conf.py")],
            cwd=ROOT,
            env=env,
            stdout=self._log_handle,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 60) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                httpx.get(self.url + "/healthz", timeout=5, trust_env=False)
                return
            except httpx.TransportError:
                time.sleep(0.3)
        raise RuntimeError(f"gunicorn did not answer within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, size: int = 4000) -> str:
        self._log_handle.flush()
        return self.log.read_bytes()[-size:].decode(errors="replace")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=15)
        self._log_handle.close()

    def __enter__(self) -> Gunicorn:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


# --------------------------------------------------------------------------------------------
# The setup step, run in its own process with the site's environment


def _setup(second_weights: str | None) -> dict:
    import django

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lungsite.settings")
    django.setup()
    from io import StringIO

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore
    from django.core.management import call_command
    from rest_framework.authtoken.models import Token

    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
    from registry.services import model_version_register

    call_command("migrate", interactive=False, verbosity=0)
    call_command("collectstatic", interactive=False, verbosity=0)
    call_command("bootstrap", stdout=StringIO())
    first = ModelVersion.objects.get(is_active=True)
    result = {"versions": [first.pk]}
    if second_weights:
        second = model_version_register(
            data=Path(second_weights).read_bytes(),
            version_name=SECOND_VERSION_NAME,
            class_names=DEFAULT_CLASS_NAMES,
            untrained=True,
            notes="test version: the starter with shifted classifier biases",
        )
        result["versions"].append(second.pk)

    users = get_user_model().objects
    for name, group, staff in (("alice", "clinician", False), ("dave", "model-admin", True)):
        user = users.create_user(username=name, password=secrets.token_urlsafe(16), is_staff=staff)
        user.groups.add(Group.objects.get(name=group))
        result[f"{name}_token"] = Token.objects.create(user=user).key
        session = SessionStore()
        session["_auth_user_id"] = str(user.pk)
        session["_auth_user_backend"] = "django.contrib.auth.backends.ModelBackend"
        session["_auth_user_hash"] = user.get_session_auth_hash()
        session.create()
        result[f"{name}_session"] = session.session_key
    return result


if __name__ == "__main__":
    if sys.argv[1:2] != ["setup"]:
        raise SystemExit("usage: python -m tests.reliability.liveserver setup [--second-weights PATH]")
    weights = sys.argv[sys.argv.index("--second-weights") + 1] if "--second-weights" in sys.argv else None
    print(json.dumps(_setup(weights)))
