"""On Postgres, one function appends a prediction to the hash chain (audit.integrity) in a single
round trip: it takes the chain's advisory lock, reads the last row's chain_hash, computes the new
row's chain_hash = sha256(prev_hash || body) and inserts the row. Before, the same steps were five
round trips (BEGIN, lock, read, insert, COMMIT); on Supabase each is a network round trip.

Each statement of a plpgsql function takes its own snapshot (READ COMMITTED), so the read after
the lock sees every row committed while this call waited for it, as the separate statements did.
`body` is the row's canonical JSON, computed by Python (audit.integrity.chain_body); Python hashes
prev_hash + body the same way on SQLite and when verify_audit walks the chain."""

from django.db import migrations

# The advisory lock key is audit.integrity._ADVISORY_LOCK_KEY ("lung").
CREATE = """
CREATE OR REPLACE FUNCTION lungsite_chain_append(
    p_body text,
    p_created_at timestamptz,
    p_model_id bigint,
    p_image_url text,
    p_results_json jsonb,
    p_image_sha256 varchar,
    p_user_id bigint,
    p_source varchar,
    p_latency_ms double precision,
    p_heatmaps jsonb,
    p_stored_sha256 varchar
) RETURNS TABLE (id bigint, prev_hash varchar, chain_hash varchar) AS $$
DECLARE
    previous varchar;
BEGIN
    PERFORM pg_advisory_xact_lock(1819635303);
    SELECT p.chain_hash INTO previous FROM predictions AS p ORDER BY p.id DESC LIMIT 1;
    previous := coalesce(previous, '');
    RETURN QUERY
    INSERT INTO predictions AS p (
        created_at, model_id, image_url, results_json, image_sha256, user_id, source, latency_ms,
        heatmaps, stored_sha256, prev_hash, chain_hash
    ) VALUES (
        p_created_at, p_model_id, p_image_url, p_results_json, p_image_sha256, p_user_id, p_source,
        p_latency_ms, p_heatmaps, p_stored_sha256, previous,
        encode(sha256(convert_to(previous || p_body, 'UTF8')), 'hex')
    )
    RETURNING p.id::bigint, p.prev_hash, p.chain_hash;
END;
$$ LANGUAGE plpgsql VOLATILE;
"""

DROP = "DROP FUNCTION IF EXISTS lungsite_chain_append(text, timestamptz, bigint, text, jsonb, varchar, bigint, varchar, double precision, jsonb, varchar);"


def forwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(CREATE, params=None)


def backwards(apps, schema_editor):
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP, params=None)


class Migration(migrations.Migration):
    dependencies = [("audit", "0004_heatmaps_help_text")]
    operations = [migrations.RunPython(forwards, backwards)]
