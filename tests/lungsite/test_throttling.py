"""The prediction throttle's counts: per process by default, shared through Redis when
LUNGSITE_CACHE_URL is set, and never the reason for a failed request when Redis is down."""

import json
import os
import secrets
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.core.cache import caches
from django.core.files.uploadedfile import SimpleUploadedFile

ROOT = Path(__file__).resolve().parents[2]
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379
URL = "/api/v1/predictions/"


def _redis_up() -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=1) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


needs_redis = pytest.mark.skipif(
    not _redis_up(), reason=f"no Redis server on {REDIS_HOST}:{REDIS_PORT} (CI's machine runs one)"
)


def _redis_cache(prefix: str, url: str = f"redis://{REDIS_HOST}:{REDIS_PORT}/15") -> dict:
    return {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": url,
            "KEY_PREFIX": prefix,
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }


def _junk():
    # Refused after the throttle (415), so no model is needed to count requests.
    return {"image": SimpleUploadedFile("a.txt", b"not an image", content_type="text/plain")}


def _forget(prefix: str) -> None:
    client = caches["default"]._cache.get_client(None, write=True)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


# The same throttle in a separate interpreter, as a second gunicorn worker would run it: it asks
# twice for the user given and prints the answers.
WORKER = """
import json, sys
import django
django.setup()
from rest_framework.test import APIRequestFactory
from rest_framework.request import Request
from common.throttling import PredictionRateThrottle

class User:
    is_authenticated = True
    pk = int(sys.argv[1])

request = Request(APIRequestFactory().post("/api/v1/predictions/"))
request.user = User()
print(json.dumps([PredictionRateThrottle().allow_request(request, None) for _ in range(2)]))
"""


def _ask_twice_in_a_new_process(user_pk: int, env: dict) -> list[bool]:
    result = subprocess.run(
        [sys.executable, "-c", WORKER, str(user_pk)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("shared", [False, pytest.param(True, marks=needs_redis)])
def test_two_processes_share_the_count_only_through_redis(tmp_path, shared):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_URL", "SUPABASE_"))}
    env.update(
        DJANGO_SETTINGS_MODULE="lungsite.settings",
        DJANGO_SECRET_KEY="test-secret",
        LUNGSITE_DATA_DIR=str(tmp_path),
        LUNGSITE_PREDICTION_RATE="3/minute",
        LUNGSITE_CACHE_URL=f"redis://{REDIS_HOST}:{REDIS_PORT}/15" if shared else "",
    )
    # The settings fix the key prefix ("lungsite"); a user id no other run uses keeps runs apart.
    user_pk = 10**9 + secrets.randbelow(10**9)
    try:
        first = _ask_twice_in_a_new_process(user_pk, env)
        second = _ask_twice_in_a_new_process(user_pk, env)
    finally:
        if shared:
            import redis

            redis.Redis.from_url(env["LUNGSITE_CACHE_URL"]).delete(
                f"lungsite:1:throttle_predictions_{user_pk}"
            )
    assert first == [True, True]
    # 3 a minute: with Redis the second worker sees the first one's two requests.
    assert second == ([True, False] if shared else [True, True])


@needs_redis
def test_the_api_answers_429_from_the_redis_count(api, clinician, settings):
    prefix = f"lungsite-test-{secrets.token_hex(6)}"
    settings.CACHES = _redis_cache(prefix)
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"predictions": "2/minute"},
    }
    try:
        client = api(clinician)
        assert [client.post(URL, _junk(), format="multipart").status_code for _ in range(2)] == [415, 415]
        response = client.post(URL, _junk(), format="multipart")
        assert response.status_code == 429
        assert response.json()["error"]["code"] == "throttled"
        assert int(response["Retry-After"]) > 0
    finally:
        _forget(prefix)


def test_requests_go_through_when_redis_is_down(api, clinician, settings, caplog):
    # Nothing listens on port 1: every cache call fails at once.
    settings.CACHES = _redis_cache("lungsite-test-down", url="redis://127.0.0.1:1/0")
    settings.REST_FRAMEWORK = {
        **settings.REST_FRAMEWORK,
        "DEFAULT_THROTTLE_RATES": {"predictions": "1/minute"},
    }
    client = api(clinician)

    statuses = [client.post(URL, _junk(), format="multipart").status_code for _ in range(3)]

    # The engine's refusal (415), not a 500 and not a 429: the limit could not be counted.
    assert statuses == [415, 415, 415]
    assert "prediction throttle skipped: the cache is unavailable" in caplog.text
