import pytest
from django.contrib.auth.models import Group


@pytest.mark.django_db
def test_it_creates_the_three_roles_with_their_permissions():
    perms = {
        group.name: {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.all()}
        for group in Group.objects.all()
    }
    assert "audit.add_prediction" in perms["clinician"]
    assert "audit.view_all_predictions" not in perms["clinician"]
    assert "audit.view_all_predictions" in perms["auditor"]
    assert "audit.add_prediction" not in perms["auditor"]
    assert "registry.activate_modelversion" in perms["model-admin"]
    assert "registry.activate_modelversion" not in perms["clinician"]


def test_it_gives_users_their_role_permissions(clinician, auditor, model_admin):
    assert clinician.has_perm("audit.add_prediction")
    assert not clinician.has_perm("audit.view_all_predictions")
    assert auditor.has_perm("audit.view_all_predictions")
    assert model_admin.has_perm("registry.activate_modelversion")
    assert not auditor.has_perm("registry.activate_modelversion")
