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


def test_the_api_permission_check_answers_as_django_does(
    clinician, auditor, model_admin, superuser, django_user_model, django_assert_num_queries
):
    from django.contrib.auth.models import AnonymousUser, Permission

    from lungsite.api_permissions import user_holds

    direct = django_user_model.objects.create_user("direct", password="x")  # granted to the user
    direct.user_permissions.add(Permission.objects.get(codename="view_prediction"))
    inactive = django_user_model.objects.create_user("gone", password="x", is_active=False)
    inactive.groups.add(Group.objects.get(name="clinician"))
    perms = [
        "audit.add_prediction",
        "audit.view_prediction",
        "audit.view_all_predictions",
        "registry.view_modelversion",
        "registry.activate_modelversion",
        "registry.nonexistent",
    ]
    for user in (clinician, auditor, model_admin, superuser, direct, inactive):
        user = django_user_model.objects.get(pk=user.pk)  # no permission cache, as per request
        for perm in perms:
            expected = django_user_model.objects.get(pk=user.pk).has_perm(perm)
            with django_assert_num_queries(0 if user.is_superuser or not user.is_active else 1):
                assert user_holds(user, perm) == expected, (user.username, perm)
    assert user_holds(AnonymousUser(), "audit.add_prediction") is False
    assert user_holds(direct, "audit.view_prediction") and not user_holds(direct, "audit.add_prediction")
