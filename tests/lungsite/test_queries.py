"""lungsite.queries: querysets compiled once give the ORM's answers for new values, on SQLite and on
Postgres (CI), and refuse querysets whose SQL would depend on the value."""

import pytest
from django.contrib.auth.models import Group, Permission, User
from django.db import connection
from django.db.models import Value
from django.test.utils import CaptureQueriesContext

from lungsite.api_permissions import user_holds
from lungsite.queries import CompiledQuery
from registry.cache import _ACTIVE_ROW
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

pytestmark = pytest.mark.django_db

_BY_NAME = CompiledQuery(lambda name: User.objects.filter(username=name).order_by("pk"), str)


def test_it_runs_the_orms_sql_with_each_calls_values():
    alice = User.objects.create(username="alice", first_name="A")
    bob = User.objects.create(username="bob", first_name="B")
    assert _BY_NAME.first_instance(User.objects, "alice") == alice
    found = _BY_NAME.first_instance(User.objects, "bob")
    assert found == bob and found.first_name == "B"  # a full instance, fields loaded
    assert _BY_NAME.first_instance(User.objects, "carol") is None
    assert _BY_NAME.first_row("bob")[0] == bob.pk
    # The SQL is the ORM's own for those values.
    expected_sql, expected_params = User.objects.filter(username="bob").order_by("pk").query.sql_with_params()
    sql, params = _BY_NAME.sql("bob")
    assert sql == expected_sql and list(params) == list(expected_params)


def test_it_compiles_once_and_then_runs_one_query_per_call():
    calls = []
    query = CompiledQuery(lambda name: calls.append(name) or User.objects.filter(username=name), str)
    User.objects.create(username="dora")
    for _ in range(3):
        with CaptureQueriesContext(connection) as queries:
            assert query.first_row("dora") is not None
        assert len(queries) == 1
    assert len(calls) == 1  # built once, with the placeholder, never with a real value
    assert calls[0].startswith("\x00")


def test_it_refuses_wrong_types_and_querysets_that_rewrite_the_value():
    with pytest.raises(TypeError):
        _BY_NAME.sql(42)
    with pytest.raises(TypeError):
        _BY_NAME.sql("a", "b")
    # A lookup that turns the value into something else: the SQL would be wrong for other values.
    rewritten = CompiledQuery(lambda name: User.objects.filter(username__contains=name), str)
    with pytest.raises(ValueError, match="must become an SQL parameter"):
        rewritten.sql("x")


def test_user_holds_agrees_with_djangos_has_perm_in_every_case():
    perm = Permission.objects.get(content_type__app_label="audit", codename="add_prediction")
    group = Group.objects.create(name="readers-and-writers")
    direct = User.objects.create(username="direct")
    direct.user_permissions.add(perm)
    via_group = User.objects.create(username="via-group")
    via_group.groups.add(group)
    group.permissions.add(perm)
    nobody = User.objects.create(username="nobody")
    inactive = User.objects.create(username="inactive", is_active=False)
    inactive.user_permissions.add(perm)
    root = User.objects.create(username="root", is_superuser=True)
    other = Group.objects.create(name="other")
    other.permissions.add(Permission.objects.get(content_type__app_label="audit", codename="view_prediction"))
    nobody.groups.add(other)
    for user in (direct, via_group, nobody, inactive, root):
        user = User.objects.get(pk=user.pk)  # no cached permissions
        for name in ("audit.add_prediction", "audit.view_prediction", "registry.change_modelversion"):
            assert user_holds(user, name) == user.has_perm(name), (user.username, name)
    assert user_holds(User.objects.get(pk=direct.pk), "audit.add_prediction")
    assert not user_holds(User.objects.get(pk=nobody.pk), "audit.add_prediction")
    # Revoking takes effect on the next call: nothing is cached but the SQL text.
    direct.user_permissions.remove(perm)
    assert not user_holds(User.objects.get(pk=direct.pk), "audit.add_prediction")


def test_the_active_row_query_finds_the_one_active_version():
    ModelVersion.objects.update(is_active=False)
    assert _ACTIVE_ROW.first_instance(ModelVersion.objects) is None
    versions = [
        ModelVersion.objects.create(
            version_name=f"v{i}",
            storage_path=f"weights/v{i}.pt",
            class_names=DEFAULT_CLASS_NAMES,
            thresholds={DEFAULT_CLASS_NAMES[0]: 0.3 + i / 10},
            sha256=str(i) * 64,
            untrained=True,
        )
        for i in range(3)
    ]
    for version in (versions[1], versions[2], versions[0]):
        ModelVersion.objects.update(is_active=False)
        ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
        row = _ACTIVE_ROW.first_instance(ModelVersion.objects)
        assert isinstance(row, ModelVersion) and row.pk == version.pk and row.sha256 == version.sha256
        assert row.class_names == DEFAULT_CLASS_NAMES  # JSON fields converted as the ORM does
        assert row.thresholds == version.thresholds and row.untrained is True


def test_instances_are_the_orms_field_for_field_without_a_raw_queryset(django_assert_num_queries):
    version = ModelVersion.objects.create(
        version_name="fields",
        storage_path="weights/fields.pt",
        class_names=DEFAULT_CLASS_NAMES,
        thresholds={"Edema": 0.25},
        preprocessing={"input_size": 224, "mean": [0.5, 0.5, 0.5]},
        sha256="f" * 64,
        untrained=False,
        accuracy_auroc=0.75,
        notes="n\u00e9",
    )
    ModelVersion.objects.update(is_active=False)
    ModelVersion.objects.filter(pk=version.pk).update(is_active=True)
    with django_assert_num_queries(1):
        found = _ACTIVE_ROW.first_instance(ModelVersion.objects)
    expected = ModelVersion.objects.get(pk=version.pk)
    for field in ModelVersion._meta.concrete_fields:
        assert getattr(found, field.attname) == getattr(expected, field.attname), field.name
    assert found._state.adding is False and found._state.db == "default"
    assert found.created_at.tzinfo is not None  # the datetime converter ran
    # From a row read by first_row: the same instance values.
    rebuilt = _ACTIVE_ROW.instance(_ACTIVE_ROW.first_row())
    assert rebuilt.thresholds == {"Edema": 0.25} and rebuilt.preprocessing["mean"] == [0.5, 0.5, 0.5]


def test_queries_that_select_something_else_have_no_instances():
    names = CompiledQuery(lambda name: User.objects.filter(username=name).values_list("pk", flat=True), str)
    User.objects.create(username="erin")
    assert names.first_row("erin") is not None
    with pytest.raises(TypeError, match="does not select one model"):
        names.instance(names.first_row("erin"))
    # first_instance still answers for a model query with more columns, through a raw queryset.
    annotated = CompiledQuery(lambda name: User.objects.filter(username=name).annotate(one=Value(1)), str)
    found = annotated.first_instance(User.objects, "erin")
    assert found.username == "erin" and found.one == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements are Postgres's")
def test_on_postgres_the_per_request_statements_are_prepared_and_errors_wrapped():
    from django.db import ProgrammingError

    from lungsite.queries import server_bound_cursor

    User.objects.create(username="frank")
    for _ in range(7):  # psycopg prepares a statement after 5 runs on a connection
        assert _BY_NAME.first_row("frank") is not None
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        prepared = [row[0] for row in cursor.fetchall()]
    assert any('FROM "auth_user"' in statement and "$1" in statement for statement in prepared), prepared
    # Django's own queries are never prepared (client-side binding).
    assert not any("pg_prepared_statements" in statement for statement in prepared)
    with pytest.raises(ProgrammingError), server_bound_cursor() as cursor:  # Django's error classes
        cursor.execute("SELECT no_such_column FROM auth_user WHERE id = %s", [1])
