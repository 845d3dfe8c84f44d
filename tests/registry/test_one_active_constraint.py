import pytest
from django.db import IntegrityError, connection, transaction

from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


def _row(name: str, active: bool) -> ModelVersion:
    return ModelVersion.objects.create(
        version_name=name,
        storage_path=f"weights/{name}.pt",
        sha256="0" * 64,
        class_names=DEFAULT_CLASS_NAMES,
        is_active=active,
    )


@pytest.mark.django_db
def test_it_refuses_a_second_active_row_through_the_orm():
    _row("a", active=True)
    with pytest.raises(IntegrityError), transaction.atomic():
        _row("b", active=True)
    assert ModelVersion.objects.filter(is_active=True).count() == 1


@pytest.mark.django_db
def test_it_allows_many_inactive_rows():
    _row("a", active=True)
    _row("b", active=False)
    _row("c", active=False)
    assert ModelVersion.objects.count() == 3


@pytest.mark.django_db
def test_it_refuses_a_second_active_row_inserted_with_raw_sql():
    _row("a", active=True)
    true = "true" if connection.vendor == "postgresql" else "1"
    sql = (
        "INSERT INTO models (created_at, version_name, storage_path, is_active, class_names, sha256, "
        "architecture, preprocessing, thresholds, per_class_auroc, untrained, notes) VALUES "
        f"(CURRENT_TIMESTAMP, 'raw', 'x', {true}, '[]', 'x', 'densenet121', '{{}}', '{{}}', '{{}}', "
        f"{'false' if connection.vendor == 'postgresql' else '0'}, '')"
    )
    with pytest.raises(IntegrityError), transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(sql)
    assert ModelVersion.objects.filter(is_active=True).count() == 1


def test_it_keeps_the_seed_columns_of_the_original_tables(django_db_blocker, db):
    with connection.cursor() as cursor:
        models_cols = {c.name for c in connection.introspection.get_table_description(cursor, "models")}
        pred_cols = {c.name for c in connection.introspection.get_table_description(cursor, "predictions")}
    assert {
        "id",
        "created_at",
        "version_name",
        "storage_path",
        "is_active",
        "accuracy_auroc",
        "class_names",
    } <= models_cols
    assert {"id", "created_at", "model_id", "image_url", "results_json"} <= pred_cols
