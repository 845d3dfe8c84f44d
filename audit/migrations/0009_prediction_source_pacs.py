from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0008_postgres_truncate_guard_findings_index")]

    operations = [
        migrations.AlterField(
            model_name="prediction",
            name="source",
            field=models.CharField(
                choices=[("web", "Web page"), ("api", "REST API"), ("pacs", "PACS")],
                default="web",
                max_length=8,
            ),
        ),
    ]
