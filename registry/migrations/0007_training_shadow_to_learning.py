# TrainingRun and ShadowPrediction now belong to the learning app: removed from this app's state
# only; their tables stay as they are and learning/migrations/0001 takes them over.

from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ("registry", "0006_serving_graph_help_text"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.DeleteModel(name="ShadowPrediction"),
                migrations.DeleteModel(name="TrainingRun"),
            ],
            database_operations=[],
        ),
    ]
