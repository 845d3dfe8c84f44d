"""Two database roles on Postgres: the owner, which runs `migrate` (settings DATABASE_MIGRATE_URL,
alias "owner"), and the application's role (DATABASE_URL, alias "default"), which may only do
what the app does: read and write most tables, but only read and append the logs (a model's
`database_privileges`, e.g. the prediction log's ("SELECT", "INSERT")), never TRUNCATE, alter,
disable a trigger or create anything. docs/audit.md, "Database roles", says what each can do.

`app_role_grant` runs after every `manage.py migrate --database owner` (post_migrate, connected in
audit's AppConfig): it sets the application role's privileges on every table from the models, so
tables added by later migrations are covered and anything granted by hand is taken back."""

from __future__ import annotations

import logging

from django.apps import apps as global_apps
from django.db import connections

logger = logging.getLogger(__name__)

READ_WRITE = ("SELECT", "INSERT", "UPDATE", "DELETE")
OWNER_ALIAS = "owner"


def app_role_name(using: str) -> str | None:
    """The role the application connects as, when `using` migrates as another role on Postgres."""
    app, migrating = connections["default"].settings_dict, connections[using].settings_dict
    if using == "default" or connections[using].vendor != "postgresql":
        return None
    if not app.get("USER") or app.get("USER") == migrating.get("USER"):
        return None
    return app["USER"]


def table_privileges() -> dict[str, tuple[str, ...]]:
    """Table name -> what the application role may do to it (the migrations' table: read only)."""
    privileges = {"django_migrations": ("SELECT",)}
    # The project's models, not the migration state's: only they carry database_privileges.
    for model in global_apps.get_models(include_auto_created=True):
        meta = model._meta
        if meta.managed and not meta.proxy:
            privileges[meta.db_table] = tuple(getattr(model, "database_privileges", READ_WRITE))
    return privileges


def grant_statements(role: str, privileges: dict[str, tuple[str, ...]], quote) -> list[str]:
    who = quote(role)
    statements = [f"GRANT USAGE ON SCHEMA public TO {who}"]
    for table, allowed in sorted(privileges.items()):
        statements.append(f"REVOKE ALL ON TABLE {quote(table)} FROM {who}")
        statements.append(f"GRANT {', '.join(allowed)} ON TABLE {quote(table)} TO {who}")
    # Inserts draw ids from the tables' sequences (identity columns own theirs).
    statements.append(f"GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO {who}")
    return statements


def app_role_grant(sender=None, *, using: str = "default", **kwargs) -> None:
    """post_migrate: the application role's privileges, from the models, when `using` is another role."""
    role = app_role_name(using)
    if role is None:
        return
    connection = connections[using]
    existing = set(connection.introspection.table_names())
    privileges = {table: allowed for table, allowed in table_privileges().items() if table in existing}
    with connection.cursor() as cursor:
        for statement in grant_statements(role, privileges, connection.ops.quote_name):
            cursor.execute(statement)
    logger.info("database role %s: privileges set on %d tables", role, len(privileges))
