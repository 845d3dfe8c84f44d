"""The activation history (`model_activations`): append-only like the prediction log.

Also: the view permission on it for the model-admin and auditor roles, one history row for a version
that was already active before this table existed, and on Postgres a trigger that refuses UPDATE and
DELETE (on SQLite the model layer refuses them)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.contrib.auth.management import create_permissions
from django.db import migrations, models

ROLES_VIEWING_HISTORY = ("model-admin", "auditor")

CREATE_TRIGGER = """
CREATE OR REPLACE FUNCTION model_activations_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'model_activations is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS model_activations_append_only ON model_activations;
CREATE TRIGGER model_activations_append_only BEFORE UPDATE OR DELETE ON model_activations
    FOR EACH ROW EXECUTE FUNCTION model_activations_append_only();
"""

DROP_TRIGGER = """
DROP TRIGGER IF EXISTS model_activations_append_only ON model_activations;
DROP FUNCTION IF EXISTS model_activations_append_only();
"""


def grant_view_permission(apps, schema_editor):
    # Permissions are normally created after all migrations ran; create them now so the groups can
    # hold them on a fresh database (same approach as 0002_roles).
    using = schema_editor.connection.alias
    for app_config in apps.get_app_configs():
        app_config.models_module = True
        create_permissions(app_config, verbosity=0, using=using)
        app_config.models_module = None
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    permission = Permission.objects.using(using).get(
        content_type__app_label="registry", codename="view_activationevent"
    )
    for name in ROLES_VIEWING_HISTORY:
        group, _ = Group.objects.using(using).get_or_create(name=name)
        group.permissions.add(permission)


def revoke_view_permission(apps, schema_editor):
    using = schema_editor.connection.alias
    Permission = apps.get_model("auth", "Permission")
    Group = apps.get_model("auth", "Group")
    for permission in Permission.objects.using(using).filter(
        content_type__app_label="registry", codename="view_activationevent"
    ):
        for group in Group.objects.using(using).filter(name__in=ROLES_VIEWING_HISTORY):
            group.permissions.remove(permission)


def record_current_activation(apps, schema_editor):
    """A registry that had an active version before the history existed gets one row for it, so the
    history starts with what is serving and that version is protected from deletion."""
    using = schema_editor.connection.alias
    ModelVersion = apps.get_model("registry", "ModelVersion")
    ActivationEvent = apps.get_model("registry", "ActivationEvent")
    for version in ModelVersion.objects.using(using).filter(is_active=True):
        ActivationEvent.objects.using(using).create(
            version=version,
            previous=None,
            activated_at=version.activated_at or django.utils.timezone.now(),
            activated_by=None,
            via="migration",
        )


def create_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE_TRIGGER, params=None)


def drop_trigger(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP_TRIGGER, params=None)


class Migration(migrations.Migration):
    dependencies = [
        ("registry", "0002_roles"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.CreateModel(
            name="ActivationEvent",
            fields=[
                ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                ("activated_at", models.DateTimeField(db_index=True, default=django.utils.timezone.now)),
                (
                    "via",
                    models.CharField(
                        choices=[
                            ("admin", "Django admin"),
                            ("command", "Management command"),
                            ("api", "REST API"),
                            ("bootstrap", "Bootstrap"),
                            ("migration", "Recorded by migration (active before history existed)"),
                        ],
                        max_length=16,
                    ),
                ),
                ("reason", models.CharField(blank=True, help_text='e.g. "rollback".', max_length=200)),
                (
                    "activated_by",
                    models.ForeignKey(
                        blank=True,
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                    ),
                ),
                (
                    "previous",
                    models.ForeignKey(
                        blank=True,
                        help_text="The version that was active just before (empty for the first activation).",
                        null=True,
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="+",
                        to="registry.modelversion",
                    ),
                ),
                (
                    "version",
                    models.ForeignKey(
                        on_delete=django.db.models.deletion.PROTECT,
                        related_name="activation_events",
                        to="registry.modelversion",
                    ),
                ),
            ],
            options={
                "verbose_name": "activation event",
                "db_table": "model_activations",
                "ordering": ["-id"],
            },
        ),
        migrations.RunPython(grant_view_permission, revoke_view_permission),
        migrations.RunPython(record_current_activation, migrations.RunPython.noop),
        migrations.RunPython(create_trigger, drop_trigger),
    ]
