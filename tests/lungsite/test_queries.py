"""lungsite.queries: querysets compiled once give the ORM's answers for new values, on SQLite and on
Postgres (CI), and refuse querysets whose SQL would depend on the value. Only audit/integrity.py and
registry/cache.py still use it (issue 19 removes both uses; this file goes with lungsite/queries.py)."""

import pytest
from django.contrib.auth.models import User
from django.db import connection
from django.db.models import Value
from django.test.utils import CaptureQueriesContext

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
