"""A client-side deadline on every database query a request runs, on Postgres.

statement_timeout is enforced by the server, and TCP keepalives / tcp_user_timeout by the kernel
when the link stops acknowledging. Neither fires when something between the worker and the
database (a pooler, a proxy, a frozen server process) keeps the TCP connection alive but never
answers: psycopg then waits on the socket for ever and the request holds its worker for the whole
stall. libpq has no read timeout, so a watchdog thread shuts the socket of a query that has run
past its deadline: psycopg's wait returns, Django raises OperationalError, and
common.middleware answers 503. Django drops the broken connection at the end of the request
and opens a new one on the next.

The deadline is LUNGSITE_DB_STATEMENT_TIMEOUT_S plus a margin, so a query the server can still
cancel ends with the server's own error first. SQLite has no network and is left alone.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time

from django.conf import settings
from django.db import connection

logger = logging.getLogger(__name__)

# Seconds past statement_timeout before the client gives up: room for the server's own answer.
MARGIN_S = 2.0
_POLL_S = 0.25
# A SELECT 1 answers in milliseconds; a connection that takes longer is treated as dead.
HEALTH_CHECK_S = 3.0

_lock = threading.Lock()
_running: dict[int, tuple[float, int]] = {}  # id of a query in flight -> (deadline, socket fd)
_watchdog: threading.Thread | None = None


def _watch() -> None:
    while True:
        time.sleep(_POLL_S)
        now = time.monotonic()
        with _lock:
            late = [key for key, (deadline, _) in _running.items() if deadline <= now]
            fds = [_running.pop(key)[1] for key in late]
        for fd in fds:
            logger.error("database query past its deadline: closing its connection")
            # A duplicate of the descriptor: shutdown() acts on the connection both share, and
            # closing the duplicate leaves libpq's own descriptor to psycopg.
            with contextlib.suppress(OSError), socket.socket(fileno=socket.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)


def _ensure_watchdog() -> None:
    global _watchdog
    with _lock:
        if _watchdog is None or not _watchdog.is_alive():
            _watchdog = threading.Thread(target=_watch, name="lungsite-db-deadline", daemon=True)
            _watchdog.start()


def deadline_s() -> float:
    return settings.LUNGSITE_DB_STATEMENT_TIMEOUT_S + MARGIN_S


@contextlib.contextmanager
def _deadline(wrapper, seconds: float):
    """Shuts the socket of Django connection `wrapper` if the block runs past `seconds`."""
    raw = wrapper.connection
    fd = getattr(getattr(raw, "pgconn", None), "socket", None) if raw is not None else None
    if fd is None:  # not connected (connect_timeout bounds connecting) or not psycopg 3
        yield
        return
    _ensure_watchdog()
    key = object()
    with _lock:
        _running[id(key)] = (time.monotonic() + seconds, fd)
    try:
        yield
    finally:
        with _lock:
            _running.pop(id(key), None)


def bounded_execute(execute, sql, params, many, context):
    """A Django execute_wrapper: the query runs as usual, its socket shut if it passes the deadline."""
    with _deadline(context["connection"], deadline_s()):
        return execute(sql, params, many, context)


class DatabaseDeadlineMiddleware:
    """Puts every query of the request under bounded_execute (Postgres with a timeout set only).

    Django's connection health check (CONN_HEALTH_CHECKS: a SELECT 1 on a connection kept from an
    earlier request) runs outside execute wrappers, so it is run here first, under a short deadline:
    a connection that went dead between requests is dropped in seconds and a new one opened."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        if connection.vendor != "postgresql" or not settings.LUNGSITE_DB_STATEMENT_TIMEOUT_S:
            return self.get_response(request)
        with _deadline(connection, min(deadline_s(), HEALTH_CHECK_S)):
            connection.close_if_health_check_failed()
        with connection.execute_wrapper(bounded_execute):
            return self.get_response(request)
