"""The three roles (README, Pages and roles) as groups with their permissions."""

from django.contrib.auth.management import create_permissions
from django.db import migrations

ROLES = {
    "clinician": [
        ("audit", "add_prediction"),
        ("audit", "view_prediction"),
        ("registry", "view_modelversion"),
    ],
    "auditor": [
        ("audit", "view_prediction"),
        ("audit", "view_all_predictions"),
        ("registry", "view_modelversion"),
    ],
    "model-admin": [
        ("registry", "view_modelversion"),
        ("registry", "add_modelversion"),
        ("registry", "change_modelversion"),
        ("registry", "activate_modelversion"),
    ],
}


def create_roles(apps, schema_editor):
    # Permissions are normally created after all migrations ran; create them now so the groups can
    # hold them on a fresh database.
    # On the database being migrated (`migrate --database owner` runs as another role).
    using = schema_editor.connection.alias
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=using)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, perms in ROLES.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        for app_label, codename in perms:
            group.permissions.add(
                Permission.objects.using(using).get(content_type__app_label=app_label, codename=codename)
            )


def remove_roles(apps, schema_editor):
    using = schema_editor.connection.alias
    apps.get_model("auth", "Group").objects.using(using).filter(name__in=ROLES).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0001_initial"),
        ("audit", "0001_initial"),
        ("auth", "0012_alter_user_first_name_max_length"),
        ("contenttypes", "0002_remove_content_type_name"),
    ]
    operations = [migrations.RunPython(create_roles, remove_roles)]
