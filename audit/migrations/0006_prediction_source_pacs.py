from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_chain_append_function")]

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
