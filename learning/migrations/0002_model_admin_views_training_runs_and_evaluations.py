"""The model-admin role may open training runs and evaluations: "Train from this version" sends the
model-admin to the new run's page, and a version's page links its evaluations. View permissions only:
both lists are read-only in the admin (runs are made by the action, evaluations by evaluate_model)."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLE = "model-admin"
PERMISSIONS = (("learning", "view_trainingrun"), ("registry", "view_evaluation"))


def _permissions(apps, using):
    Permission = apps.get_model("auth", "Permission")
    return [
        Permission.objects.using(using).get(content_type__app_label=app_label, codename=codename)
        for app_label, codename in PERMISSIONS
    ]


def grant(apps, schema_editor):
    # Permissions are normally created after all migrations ran; create them now so the group can
    # hold them on a fresh database (as registry's 0002_roles and 0003 do), on the database being
    # migrated (the owner's alias when the app's role may not create them).
    using = schema_editor.connection.alias
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=using)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    group, _ = Group.objects.using(using).get_or_create(name=ROLE)
    group.permissions.add(*_permissions(apps, using))


def revoke(apps, schema_editor):
    using = schema_editor.connection.alias
    Group = apps.get_model("auth", "Group")
    for group in Group.objects.using(using).filter(name=ROLE):
        group.permissions.remove(*_permissions(apps, using))


class Migration(migrations.Migration):
    dependencies = [
        ("learning", "0001_initial"),
        ("registry", "0007_training_shadow_to_learning"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]

    operations = [migrations.RunPython(grant, revoke)]
