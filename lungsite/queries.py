"""Querysets compiled to SQL once per process, for the queries that every API request runs.

Turning a queryset into SQL (Query -> SQLCompiler -> SQL text) costs 0.3-0.5 ms of Python per
query on a 2-core VM: for the permission check and the active-version lookup that is several times
what SQLite takes to answer them. Their SQL depends on the database backend alone, not on the values
looked up, so a `CompiledQuery` builds the queryset once with placeholder values, keeps the SQL,
and runs it again with the real values (a cursor, or `Manager.raw` for model instances). The
queryset stays the single definition of the query: the ORM still writes the SQL.

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


class CompiledQuery:
    """`build(*values) -> QuerySet`, compiled on first use per database alias and vendor.

    `kinds` gives each value's type (int or str), which decides its placeholder."""

    def __init__(self, build: Callable[..., QuerySet], *kinds: type, exists: bool = False) -> None:
        self._build, self._kinds, self._exists = build, kinds, exists
        self._compiled: dict[tuple[str, str], tuple[str, list]] = {}
        self._lock = threading.Lock()

    def _placeholders(self) -> list:
        return [
            _PLACEHOLDER_INT - i if kind is int else f"\x00lungsite-placeholder-{i}"
            for i, kind in enumerate(self._kinds)
        ]

    def _compile(self, using: str) -> tuple[str, list]:
        placeholders = self._placeholders()
        query = self._build(*placeholders).query
        if self._exists:
            query = query.exists(limit=True)
        sql, params = query.get_compiler(using=using).as_sql()
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
        return sql, template

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
        sql, template = compiled
        return sql, [values[v] if kind == "value" else v for kind, v in template]

    def first_row(self, *values, using: str = "default") -> tuple | None:
        sql, params = self.sql(*values, using=using)
        with connections[using].cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()

    def first_instance(self, manager, *values, using: str = "default"):
        """The first model instance the query returns (through `manager.raw`), or None."""
        sql, params = self.sql(*values, using=using)
        return next(iter(manager.raw(sql, params).using(using)), None)
