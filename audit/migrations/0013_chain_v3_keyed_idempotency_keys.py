"""Chain version 3 (audit.integrity): rows hashed with HMAC-SHA256 under an audit key the database
does not hold (audit.keys), the key's id on each row (chain_key_id). ChainGenesis.keyed_from_id
records the first id that must be keyed: every row written from now on. The prediction API's
Idempotency-Key table (audit.idempotency)."""

import django.db.models.deletion
import django.utils.timezone
from django.conf import settings
from django.db import migrations, models


def record_keyed_from(apps, schema_editor):
    """Rows that exist now keep their unkeyed form (versions 1 and 2); every later one is keyed."""
    Prediction = apps.get_model("audit", "Prediction")
    ChainGenesis = apps.get_model("audit", "ChainGenesis")
    using = schema_editor.connection.alias
    last = Prediction.objects.using(using).order_by("-id").values_list("id", flat=True).first() or 0
    genesis = ChainGenesis.objects.using(using).order_by("id").first()
    if genesis is None:
        ChainGenesis.objects.using(using).create(unchained_through_id=0, keyed_from_id=last + 1)
    else:
        ChainGenesis.objects.using(using).filter(pk=genesis.pk).update(keyed_from_id=last + 1)


class Migration(migrations.Migration):

    dependencies = [
        ('audit', '0012_drop_fk_indexes_covered_by_composites'),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [
        migrations.AddField(
            model_name='chaingenesis',
            name='keyed_from_id',
            field=models.BigIntegerField(default=1),
        ),
        migrations.AddField(
            model_name='prediction',
            name='chain_key_id',
            field=models.CharField(blank=True, default='', editable=False, max_length=32),
        ),
        migrations.AlterField(
            model_name='prediction',
            name='chain_version',
            field=models.PositiveSmallIntegerField(default=3, editable=False),
        ),
        migrations.CreateModel(
            name='IdempotencyKey',
            fields=[
                ('id', models.BigAutoField(auto_created=True, primary_key=True, serialize=False, verbose_name='ID')),
                ('key', models.CharField(max_length=255)),
                ('created_at', models.DateTimeField(default=django.utils.timezone.now)),
                ('prediction', models.OneToOneField(on_delete=django.db.models.deletion.PROTECT, related_name='+', to='audit.prediction')),
                ('user', models.ForeignKey(on_delete=django.db.models.deletion.PROTECT, related_name='+', to=settings.AUTH_USER_MODEL)),
            ],
            options={
                'db_table': 'prediction_idempotency_keys',
                'constraints': [models.UniqueConstraint(fields=('user', 'key'), name='idempotency_key_per_user')],
            },
        ),
        migrations.RunPython(record_keyed_from, migrations.RunPython.noop),
    ]
