"""Chain version 2 (audit.integrity): heatmaps as float16 bytes (heatmap_data) hashed as bytes, the
upload's base name (file_name); rows already written stay chain version 1 and keep verifying.
Indexes for the log's lists at any size: (created_at, id), (model, created_at, id) and
(user, created_at, id) for keyset pages and ranges; image_sha256 loses its unused `_like` twin.
ChainGenesis records which rows predate the chain (unchained rows before the first chained one)."""

import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def record_genesis(apps, schema_editor):
    """Rows without hashes that come before the first chained row are the log from before the
    chain (migration 0003); any other unchained row is a break."""
    Prediction = apps.get_model("audit", "Prediction")
    ChainGenesis = apps.get_model("audit", "ChainGenesis")
    using = schema_editor.connection.alias
    first_chained = (
        Prediction.objects.using(using).exclude(chain_hash="").order_by("id").values_list("id", flat=True).first()
    )
    legacy = Prediction.objects.using(using).filter(chain_hash="")
    if first_chained is not None:
        legacy = legacy.filter(id__lt=first_chained)
    last = legacy.order_by("-id").values_list("id", flat=True).first()
    ChainGenesis.objects.using(using).create(unchained_through_id=last or 0)


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0006_drop_chain_append_function'),
        ('registry', '0004_serving_graph'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        # (record_genesis runs after the model exists: see the end of the list)
        migrations.CreateModel(
            name='ChainGenesis',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('unchained_through_id', models.BigIntegerField(default=0)),
                ('recorded_at', models.DateTimeField(auto_now_add=True)),
            ],
            options={
                'db_table': 'audit_chain_genesis',
            },
        ),
        migrations.AddField(
            model_name='prediction',
            name='chain_version',
            field=models.PositiveSmallIntegerField(default=1, editable=False),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='chain_version',
            field=models.PositiveSmallIntegerField(default=2, editable=False),
        ),
        migrations.AddField(
            model_name='prediction',
            name='file_name',
            field=models.CharField(blank=True, default='', help_text="Base name of the uploaded file, truncated (a DICOM's name may carry patient data: shown to those who may see the prediction only).", max_length=255),
        ),
        migrations.AddField(
            model_name='prediction',
            name='heatmap_data',
            field=models.BinaryField(blank=True, default=b''),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='created_at',
            field=models.DateTimeField(default=django.utils.timezone.now),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='heatmaps',
            field=models.JSONField(default=dict, help_text='Chain version 1 rows: finding name to its raw Grad-CAM map (e.g. 7x7 lists of floats). Version 2 rows keep the maps in heatmap_data and leave this empty.'),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='image_sha256',
            field=models.CharField(max_length=64),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(fields=['created_at', 'id'], name='predictions_created_id'),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(fields=['model', 'created_at', 'id'], name='predictions_model_created_id'),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(fields=['user', 'created_at', 'id'], name='predictions_user_created_id'),
        ),
        migrations.AddIndex(
            model_name='prediction',
            index=models.Index(fields=['image_sha256'], name='predictions_image_sha256'),
        ),
        migrations.RunPython(record_genesis, migrations.RunPython.noop),
    ]
