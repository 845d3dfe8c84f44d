import pytest
from django.contrib.auth.models import Group

from audit.models import Prediction


@pytest.fixture
def prediction(starter_model, clinician):
    return Prediction.objects.create(
        model=starter_model,
        image_url="images/x.png",
        results_json={"findings": []},
        image_sha256="1" * 64,
        user=clinician,
    )


def test_it_shows_the_log_read_only_to_staff_auditors(client, auditor, prediction):
    auditor.is_staff = True
    auditor.save()
    client.force_login(auditor)
    assert client.get("/admin/audit/prediction/").status_code == 200
    assert client.get(f"/admin/audit/prediction/{prediction.pk}/change/").status_code == 200
    assert client.get("/admin/audit/prediction/add/").status_code == 403
    response = client.post(f"/admin/audit/prediction/{prediction.pk}/delete/", {"post": "yes"})
    assert response.status_code == 403
    assert Prediction.objects.filter(pk=prediction.pk).exists()


def test_it_hides_the_log_from_model_admins(client, model_admin, prediction):
    assert not Group.objects.get(name="model-admin").permissions.filter(codename="view_all_predictions")
    client.force_login(model_admin)
    assert client.get("/admin/audit/prediction/").status_code == 403
