import pytest
from django.db import DatabaseError, connection, transaction

from audit.models import AppendOnlyError, Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


@pytest.fixture
def prediction(db):
    version = ModelVersion.objects.create(
        version_name="v", storage_path="weights/v.pt", sha256="0" * 64, class_names=DEFAULT_CLASS_NAMES
    )
    return Prediction.objects.create(
        model=version, image_url="images/x.png", results_json={"findings": []}, image_sha256="1" * 64
    )


def test_it_refuses_to_update_a_row_through_the_model(prediction):
    prediction.image_url = "images/other.png"
    with pytest.raises(AppendOnlyError):
        prediction.save()
    with pytest.raises(AppendOnlyError):
        Prediction.objects.filter(pk=prediction.pk).update(image_url="y")
    assert Prediction.objects.get(pk=prediction.pk).image_url == "images/x.png"


def test_it_refuses_to_delete_a_row_through_the_model(prediction):
    with pytest.raises(AppendOnlyError):
        prediction.delete()
    with pytest.raises(AppendOnlyError):
        Prediction.objects.all().delete()
    assert Prediction.objects.count() == 1


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the trigger exists on Postgres only")
@pytest.mark.parametrize("sql", ["UPDATE predictions SET image_url = 'tampered'", "DELETE FROM predictions"])
def test_it_refuses_raw_update_and_delete_on_postgres(prediction, sql):
    with pytest.raises(DatabaseError, match="append-only"), transaction.atomic(), connection.cursor() as cur:
        cur.execute(sql)
    assert Prediction.objects.get(pk=prediction.pk).image_url == "images/x.png"
