"""The chained insert is plain Django again (audit.integrity.prediction_create_chained: lock, read,
hash, save() in one transaction), so the plpgsql function of 0005 goes. Rows it wrote hash the same
canonical JSON that Python hashes, and keep verifying."""

import importlib

from django.db import migrations

_0005 = importlib.import_module("audit.migrations.0005_chain_append_function")


class Migration(migrations.Migration):
    dependencies = [("audit", "0005_chain_append_function")]
    operations = [migrations.RunPython(_0005.backwards, _0005.forwards)]
