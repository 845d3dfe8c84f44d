"""On Postgres, a trigger refuses UPDATE and DELETE on predictions: the audit log is append-only
even for someone holding a database connection. (On SQLite the model layer refuses them.)"""

from django.db import migrations

CREATE = """
CREATE OR REPLACE FUNCTION predictions_append_only() RETURNS trigger AS $$
BEGIN
    RAISE EXCEPTION 'predictions is append-only: % refused', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS predictions_append_only ON predictions;
CREATE TRIGGER predictions_append_only BEFORE UPDATE OR DELETE ON predictions
    FOR EACH ROW EXECUTE FUNCTION predictions_append_only();
"""

DROP = """
DROP TRIGGER IF EXISTS predictions_append_only ON predictions;
DROP FUNCTION IF EXISTS predictions_append_only();
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]
    operations = [migrations.RunPython(forwards, backwards)]
