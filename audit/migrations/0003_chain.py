"""The hash chain of the prediction log (audit.integrity): prev_hash and chain_hash on every row,
and stored_sha256, the hash of the stored image (which differs from the upload once metadata is stripped).

Adding columns fires no row trigger, so the append-only trigger of 0002 stays in place. Rows written
before this migration keep empty hashes; `manage.py verify_audit` reports them as unchained."""

from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [("audit", "0002_append_only_trigger")]

    operations = [
        migrations.AddField(
            model_name="prediction",
            name="stored_sha256",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="prediction",
            name="prev_hash",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
        migrations.AddField(
            model_name="prediction",
            name="chain_hash",
            field=models.CharField(blank=True, default="", editable=False, max_length=64),
        ),
    ]
