"""A stalled database answers 503 in seconds (issue 20): the database behind a proxy that freezes
while the worker's connection is open, so only a deadline on the client's side can notice."""

import time

import pytest
from django.db import close_old_connections, connection

from tests.reliability.dbproxy import TcpProxy

pytestmark = pytest.mark.skipif(
    connection.vendor != "postgresql",
    reason="needs Postgres (set DATABASE_URL=postgres://...): SQLite has no network to stall",
)


@pytest.fixture
def through_proxy(transactional_db):
    """The default connection, reopened through a TcpProxy to the real server."""
    saved = dict(connection.settings_dict)
    connection.close()
    with TcpProxy((saved["HOST"] or "127.0.0.1", int(saved["PORT"] or 5432))) as proxy:
        connection.settings_dict.update(HOST="127.0.0.1", PORT=str(proxy.port))
        try:
            yield proxy
        finally:
            proxy.thaw()
            connection.close()
            connection.settings_dict.clear()
            connection.settings_dict.update(saved)


def test_it_answers_503_within_seconds_when_the_database_freezes_on_an_open_connection(
    client, through_proxy, settings
):
    settings.LUNGSITE_DB_STATEMENT_TIMEOUT_S = 1
    assert client.get("/healthz").status_code == 200
    assert through_proxy.connections == 1

    through_proxy.freeze()
    started = time.monotonic()
    frozen = client.get("/healthz")
    elapsed = time.monotonic() - started

    assert frozen.status_code == 503
    assert frozen.json()["checks"]["database"] == "unavailable"
    assert elapsed < 1 + 2 + 1.5  # the statement timeout, the margin, the watchdog's poll

    # What Django does at the end of every request: the broken connection is dropped, and the next
    # request connects anew once the database answers again.
    through_proxy.thaw()
    close_old_connections()
    assert client.get("/api/v1/models/").status_code == 401
    assert client.get("/healthz").status_code == 200


def test_an_api_request_on_a_frozen_database_is_a_json_503(client, through_proxy, settings, clinician):
    from rest_framework.authtoken.models import Token

    settings.LUNGSITE_DB_STATEMENT_TIMEOUT_S = 1
    key = Token.objects.create(user=clinician).key
    headers = {"HTTP_AUTHORIZATION": f"Token {key}"}
    assert client.get("/api/v1/predictions/", **headers).status_code == 200

    through_proxy.freeze()
    started = time.monotonic()
    response = client.get("/api/v1/predictions/", **headers)

    assert time.monotonic() - started < 4.5
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "database_unavailable"
