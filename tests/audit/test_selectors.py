"""audit.selectors: who sees which predictions."""

import pytest

from audit.models import Prediction
from audit.selectors import prediction_get_for, prediction_list_for
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


@pytest.fixture
def rows(clinician, other_clinician):
    version = ModelVersion.objects.create(
        version_name="v", storage_path="weights/x.pt", sha256="a" * 64, class_names=DEFAULT_CLASS_NAMES
    )

    def row(user):
        return Prediction.objects.create(
            model=version, image_url="images/x.png", results_json={}, image_sha256="b" * 64, user=user
        )

    return {"alice": row(clinician), "bob": row(other_clinician)}


def test_it_shows_a_clinician_only_their_own(rows, clinician):
    assert list(prediction_list_for(user=clinician)) == [rows["alice"]]
    assert prediction_get_for(user=clinician, pk=rows["alice"].pk) == rows["alice"]
    with pytest.raises(Prediction.DoesNotExist):
        prediction_get_for(user=clinician, pk=rows["bob"].pk)


def test_it_shows_auditors_and_superusers_everything(rows, auditor, superuser):
    for user in (auditor, superuser):
        assert set(prediction_list_for(user=user)) == set(rows.values())
        assert prediction_get_for(user=user, pk=str(rows["bob"].pk)) == rows["bob"]


def test_it_shows_anonymous_users_nothing(rows):
    from django.contrib.auth.models import AnonymousUser

    assert not prediction_list_for(user=AnonymousUser()).exists()
    with pytest.raises(Prediction.DoesNotExist):
        prediction_get_for(user=AnonymousUser(), pk=rows["alice"].pk)


def test_it_treats_a_malformed_id_as_not_found(rows, auditor):
    with pytest.raises(Prediction.DoesNotExist):
        prediction_get_for(user=auditor, pk="1; drop table")
