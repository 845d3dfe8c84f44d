"""Reading the whole log, or a large part of it, in constant memory: the CSV export and
verify_audit.

On Postgres the query runs once and its rows stream to the client as the server produces them
(psycopg's `Cursor.stream`), so the server reads the next rows while Python formats or hashes
these. A server-side cursor (QuerySet.iterator) fetches in round trips instead, each side idle
while the other works. The read is one transaction with two settings of its own (SET LOCAL, gone at
its end):
- statement_timeout 0: it is one long statement by design (TCP keepalives and tcp_user_timeout
  still drop a dead link);
- jit off: Postgres JIT-compiles a plan that costs as much as a full scan, which takes 0.2-2 s
  before the first row and gains nothing for rows that are only handed on.

Elsewhere (SQLite) it is QuerySet.iterator().
"""

from __future__ import annotations

from collections.abc import Iterator

from django.db import connections, transaction
from django.db.models import QuerySet


def rows_streamed(queryset: QuerySet, *, chunk_size: int = 1000) -> Iterator[tuple]:
    """The rows of a values_list() queryset as tuples, in its order. Annotations must come last
    in the values_list() and in the order they were annotated (the SQL selects them so).

    While it streams, its connection runs nothing else (psycopg holds the connection's lock: a
    second query on it would wait for ever): consume it or close() it first."""
    connection = connections[queryset.db]
    if connection.vendor != "postgresql":
        yield from queryset.iterator(chunk_size=chunk_size)
        return
    sql, params = queryset.query.sql_with_params()
    with transaction.atomic(using=queryset.db), connection.cursor() as cursor:
        cursor.execute("SET LOCAL statement_timeout = 0")
        cursor.execute("SET LOCAL jit = off")
        # Errors raised as Django's (django.db.OperationalError, ...), as from any other query.
        with connection.wrap_database_errors:
            yield from cursor.cursor.stream(sql, params, size=chunk_size)
