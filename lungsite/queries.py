"""Querysets compiled to SQL once per process, for the queries that every API request runs.

Turning a queryset into SQL (Query -> SQLCompiler -> SQL text) costs 0.3-0.5 ms of Python per
query on a 2-core VM: for the permission check and the active-version lookup that is several times
what SQLite takes to answer them. Their SQL depends on the database backend alone, not on the values
looked up, so a `CompiledQuery` builds the queryset once with placeholder values, keeps the SQL,
and runs it again with the real values. The queryset stays the single definition of the query: the
ORM still writes the SQL.

Model instances are built from the row as the ORM builds them (the fields' database converters,
then `Model.from_db`), without a RawQuerySet; in a profile of in-process requests that took the
active-version lookup from 1.0 to 0.2-0.26 ms. A query that selects anything other than its model's
fields gets its instances from `Manager.raw`.

Only for querysets whose SQL is the same for every value: equality filters on values that are never
None (None would turn `= %s` into `IS NULL`). Compiling refuses a queryset where a placeholder does
not come out as a parameter (a value the ORM rewrote).
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from django.db import connections
from django.db.models import QuerySet

_PLACEHOLDER_INT = -1_987_654_320  # never a primary key; placeholder i is this minus i


def server_bound_cursor(using: str = "default"):
    """A cursor for the statements every request runs. On Postgres (psycopg 3) the server binds its
    values, so psycopg prepares a statement after 5 runs on a connection (parsed and planned once;
    never with DJANGO_DB_PREPARED_STATEMENTS off or behind a transaction pooler, see settings) and
    long values travel as they are instead of being quoted into the SQL. Django's own queries keep
    client-side binding. Elsewhere: Django's cursor. Either is Django's cursor wrapper (errors
    wrapped, queries logged as usual) and works as a context manager."""
    connection = connections[using]
    if connection.vendor != "postgresql":
        return connection.cursor()
    from django.db.backends.postgresql import base

    if not base.is_psycopg3:
        return connection.cursor()
    # What BaseDatabaseWrapper._cursor does, with a server-binding cursor in place of Django's
    # client-binding one, and the time zone check of its create_cursor.
    connection.close_if_health_check_failed()
    connection.ensure_connection()
    with connection.wrap_database_errors:
        cursor = base.ServerBindingCursor(connection.connection)
        loader = connection.connection.adapters.get_loader(base.TIMESTAMPTZ_OID, base.Format.TEXT)
        if connection.timezone != loader.timezone:
            base.register_tzloader(connection.timezone, cursor)
        return connection._prepare_cursor(cursor)


class CompiledQuery:
    """`build(*values) -> QuerySet`, compiled on first use per database alias and vendor.

    `kinds` gives each value's type (int or str), which decides its placeholder."""

    def __init__(self, build: Callable[..., QuerySet], *kinds: type, exists: bool = False) -> None:
        self._build, self._kinds, self._exists = build, kinds, exists
        self._compiled: dict[tuple[str, str], tuple[str, list, tuple | None]] = {}
        self._lock = threading.Lock()

    def _placeholders(self) -> list:
        return [
            _PLACEHOLDER_INT - i if kind is int else f"\x00lungsite-placeholder-{i}"
            for i, kind in enumerate(self._kinds)
        ]

    def _compile(self, using: str) -> tuple[str, list, tuple | None]:
        placeholders = self._placeholders()
        query = self._build(*placeholders).query
        if self._exists:
            query = query.exists(limit=True)
        compiler = query.get_compiler(using=using)
        sql, params = compiler.as_sql()
        # Each parameter is either ("value", i), the i-th value of the call, or ("constant", p).
        template, found = [], []
        for param in params:
            match = [i for i, p in enumerate(placeholders) if type(p) is type(param) and p == param]
            if match:
                template.append(("value", match[0]))
                found.append(match[0])
            else:
                template.append(("constant", param))
        if set(found) != set(range(len(placeholders))):
            raise ValueError(f"every value must become an SQL parameter: {sql!r} {params!r}")
        return sql, template, self._row_layout(compiler)

    @staticmethod
    def _row_layout(compiler) -> tuple | None:
        """(model, field attnames, {column: (converters, expression)}) when the query selects
        exactly its model's concrete fields, in order (a plain model queryset); else None."""
        model = compiler.query.model
        if compiler.query.values_select or compiler.annotation_col_map or compiler.klass_info is None:
            return None
        fields = [column.target for column, _, _ in compiler.select if hasattr(column, "target")]
        if len(fields) != len(compiler.select) or fields != list(model._meta.concrete_fields):
            return None
        # Backend converters are bound to the compiling thread's connection.ops; they read settings
        # only (time zone, JSON decoder), and each call passes its own thread's connection.
        converters = compiler.get_converters([column for column, _, _ in compiler.select])
        return model, [field.attname for field in fields], converters

    def sql(self, *values, using: str = "default") -> tuple[str, list]:
        """(SQL, parameters) of the queryset for `values`."""
        if len(values) != len(self._kinds) or any(
            type(value) is not kind for value, kind in zip(values, self._kinds, strict=True)
        ):
            raise TypeError(f"expected values of types {self._kinds}, got {values!r}")
        key = (using, connections[using].vendor)
        compiled = self._compiled.get(key)
        if compiled is None:
            with self._lock:
                compiled = self._compiled.get(key) or self._compile(using)
                self._compiled[key] = compiled
        sql, template, _ = compiled
        return sql, [values[v] if kind == "value" else v for kind, v in template]

    def _layout(self, using: str) -> tuple | None:
        return self._compiled[(using, connections[using].vendor)][2]

    def first_row(self, *values, using: str = "default") -> tuple | None:
        sql, params = self.sql(*values, using=using)
        with server_bound_cursor(using) as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def first_instance(self, manager, *values, using: str = "default"):
        """The first model instance the query returns, or None."""
        sql, params = self.sql(*values, using=using)
        if self._layout(using) is None:
            return next(iter(manager.raw(sql, params).using(using)), None)
        with server_bound_cursor(using) as cursor:
            cursor.execute(sql, params)
            row = cursor.fetchone()
        return None if row is None else self.instance(row, using=using)

    def instance(self, row: tuple, *, using: str = "default"):
        """The model instance of `row` (a row this query returned, as the cursor gave it), built as
        the ORM builds it: each field's database converters, then `Model.from_db`."""
        layout = self._layout(using)
        if layout is None:
            raise TypeError("this query does not select one model's fields")
        model, names, converters = layout
        connection = connections[using]
        values = list(row)
        for position, (functions, expression) in converters.items():
            value = values[position]
            for function in functions:
                value = function(value, expression, connection)
            values[position] = value
        return model.from_db(using, names, values)
