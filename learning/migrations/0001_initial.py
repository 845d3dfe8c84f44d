# Takes over the tables model_training_runs and model_shadow_predictions from the registry app
# (registry/migrations/0007): state only, nothing is rebuilt. Their content types move with them,
# so existing permissions and admin log entries keep pointing at the same models.

import django.db.models.deletion
from django.conf import settings
from django.db import migrations, models

MOVED = ("trainingrun", "shadowprediction")


def content_types_to_learning(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    for model in MOVED:
        if not types.filter(app_label="learning", model=model).exists():
            types.filter(app_label="registry", model=model).update(app_label="learning")


def content_types_to_registry(apps, schema_editor):
    ContentType = apps.get_model("contenttypes", "ContentType")
    types = ContentType.objects.using(schema_editor.connection.alias)
    for model in MOVED:
        if not types.filter(app_label="registry", model=model).exists():
            types.filter(app_label="learning", model=model).update(app_label="registry")


class Migration(migrations.Migration):

    initial = True

    dependencies = [
        ("audit", "0012_drop_fk_indexes_covered_by_composites"),
        ("contenttypes", "0002_remove_content_type_name"),
        ("registry", "0007_training_shadow_to_learning"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.CreateModel(
                    name="TrainingRun",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("options", models.JSONField(default=dict, help_text="labels, images, epochs, batch_size, lr, ...")),
                        ("status", models.CharField(choices=[("queued", "Queued"), ("running", "Running"), ("done", "Done"), ("failed", "Failed")], default="queued", max_length=10)),
                        ("progress", models.JSONField(blank=True, default=dict, help_text="epoch, step, loss, val AUROC.")),
                        ("message", models.TextField(blank=True, default="")),
                        ("started_at", models.DateTimeField(blank=True, null=True)),
                        ("finished_at", models.DateTimeField(blank=True, null=True)),
                        ("base_version", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="training_runs", to="registry.modelversion")),
                        ("created_by", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to=settings.AUTH_USER_MODEL)),
                        ("result_version", models.ForeignKey(blank=True, null=True, on_delete=django.db.models.deletion.SET_NULL, related_name="+", to="registry.modelversion")),
                    ],
                    options={"db_table": "model_training_runs", "ordering": ["-created_at", "-id"]},
                ),
                migrations.CreateModel(
                    name="ShadowPrediction",
                    fields=[
                        ("id", models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name="ID")),
                        ("created_at", models.DateTimeField(auto_now_add=True)),
                        ("probabilities", models.JSONField(help_text="Class name to probability.")),
                        ("latency_ms", models.FloatField(blank=True, null=True)),
                        ("prediction", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="+", to="audit.prediction")),
                        ("version", models.ForeignKey(on_delete=django.db.models.deletion.CASCADE, related_name="shadow_predictions", to="registry.modelversion")),
                    ],
                    options={
                        "db_table": "model_shadow_predictions",
                        "ordering": ["-id"],
                        "constraints": [models.UniqueConstraint(fields=("prediction", "version"), name="shadow_one_per_prediction")],
                    },
                ),
            ],
            database_operations=[],
        ),
        migrations.RunPython(content_types_to_learning, content_types_to_registry),
    ]
