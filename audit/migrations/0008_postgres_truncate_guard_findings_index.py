"""Postgres only:
- TRUNCATE on predictions is refused like UPDATE and DELETE (a statement trigger on the function of
  0002). The test runner's databases (named test_*) may still be flushed between tests.
- A GIN index over the names of each row's positive findings (an expression over results_json, so
  rows written before it are covered too): the audit log's "positive finding" filter
  (audit.selectors) uses the same expression."""

from django.db import migrations

FINDINGS_INDEX = """
CREATE INDEX IF NOT EXISTS predictions_positive_findings ON predictions USING gin (
    (jsonb_path_query_array(results_json, '$.findings[*] ? (@.positive == true).name'))
);
"""

TRUNCATE_GUARD = """
CREATE OR REPLACE FUNCTION predictions_no_truncate() RETURNS trigger AS $$
BEGIN
    -- The test runner flushes its own scratch databases between tests; a test that checks this
    -- guard sets lungsite.enforce_truncate_guard to see it refuse there too.
    IF current_database() LIKE 'test\\_%'
            AND coalesce(current_setting('lungsite.enforce_truncate_guard', true), '') <> 'on' THEN
        RETURN NULL;
    END IF;
    RAISE EXCEPTION 'predictions is append-only: TRUNCATE refused'
        USING ERRCODE = 'insufficient_privilege';
END;
$$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS predictions_no_truncate ON predictions;
CREATE TRIGGER predictions_no_truncate BEFORE TRUNCATE ON predictions
    FOR EACH STATEMENT EXECUTE FUNCTION predictions_no_truncate();
"""

DROP = """
DROP TRIGGER IF EXISTS predictions_no_truncate ON predictions;
DROP FUNCTION IF EXISTS predictions_no_truncate();
DROP INDEX IF EXISTS predictions_positive_findings;
"""


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(FINDINGS_INDEX, params=None)
        schema_editor.execute(TRUNCATE_GUARD, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0007_chain_v2_heatmap_bytes_indexes")]
    operations = [migrations.RunPython(forwards, backwards)]
