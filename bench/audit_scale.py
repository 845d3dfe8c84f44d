"""The audit log at scale: fills a scratch Postgres database with N predictions chained by the
project's own code (audit.integrity), then times the audit pages, history, API list, CSV export,
verify_audit and one append, and prints one JSON object.

    .venv/bin/python bench/audit_scale.py --rows 100000 [--database-url URL] [--keep]

URL names the scratch database to create (default postgres://postgres@127.0.0.1:5432/lungsite_audit_scale);
it must not exist yet, and is dropped at the end unless --keep. Rows are written with COPY after
their chain hashes are computed by audit.integrity.compute_chain_hash, so the chain verifies.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/lungsite_audit_scale"
USERS = 40
VERSIONS = 3
HEATMAP_POOL = 500  # distinct heatmap byte sets reused across rows (each row's bytes are hashed)
COPY_BATCH = 20_000


def _admin_connect(url: str):
    import psycopg

    parsed = urlparse(url)
    return psycopg.connect(parsed._replace(path="/postgres").geturl(), autocommit=True), parsed.path.lstrip(
        "/"
    )


def _create_database(url: str) -> None:
    admin, name = _admin_connect(url)
    with admin:
        if admin.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            raise SystemExit(f"database {name} exists already: pick another --database-url or drop it")
        admin.execute(f'CREATE DATABASE "{name}"')


def _drop_database(url: str) -> None:
    from django.db import connections

    connections.close_all()
    admin, name = _admin_connect(url)
    with admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _median_ms(fn, runs: int = 7) -> float:
    fn()  # warm
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append((time.perf_counter() - started) * 1000.0)
    return round(statistics.median(times), 1)


def _fill(rows: int) -> dict:
    """N chained rows in id order, created_at from three years ago to now."""
    import datetime as dt

    import numpy as np
    from django.contrib.auth import get_user_model
    from django.db import connection
    from django.utils import timezone

    from analysis.results import results_json
    from audit.integrity import CHAIN_VERSION, compute_chain_hash
    from audit.keys import keyring
    from audit.models import Prediction
    from audit.services import heatmap_data
    from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

    rng = np.random.default_rng(25)
    users = [
        get_user_model().objects.create_user(username=f"clinician{n}", password="x") for n in range(USERS)
    ]
    versions = [
        ModelVersion.objects.create(
            version_name=f"scale-v{n}",
            storage_path=f"weights/scale-v{n}.pt",
            sha256=f"{n:064x}",
            class_names=DEFAULT_CLASS_NAMES,
            thresholds={"Pneumothorax": 0.7},
        )
        for n in range(VERSIONS)
    ]
    pool = [
        heatmap_data(cams=np.maximum(rng.normal(0, 1.5, (13, 7, 7)), 0).astype(np.float32))
        for _ in range(HEATMAP_POOL)
    ]
    end = timezone.now()
    start = end - dt.timedelta(days=3 * 365)
    step = (end - start) / max(rows, 1)
    columns = [
        "created_at",
        "model_id",
        "image_url",
        "results_json",
        "image_sha256",
        "file_name",
        "user_id",
        "source",
        "latency_ms",
        "heatmaps",
        "heatmap_data",
        "chain_version",
        "chain_key_id",
        "stored_sha256",
        "prev_hash",
        "chain_hash",
    ]
    keys = keyring()
    sql = f"COPY predictions ({', '.join(columns)}) FROM STDIN"
    prev = ""
    started = time.perf_counter()
    written = 0
    raw = connection.cursor().cursor  # psycopg's cursor, for COPY
    while written < rows:
        batch = min(COPY_BATCH, rows - written)
        probabilities = rng.beta(0.6, 3.0, (batch, 13)).astype(np.float32)
        with raw.copy(sql) as copy:
            for i in range(batch):
                n = written + i
                version = versions[n * VERSIONS // rows]  # versions succeed one another over time
                row = Prediction(
                    chain_version=CHAIN_VERSION,
                    chain_key_id=keys.signing_id,
                    created_at=start + step * n,
                    model_id=version.pk,
                    image_url=f"images/scale/{n}.png",
                    results_json=results_json(version=version, probabilities=probabilities[i]),
                    image_sha256=f"{n:064x}",
                    file_name=f"{n:08d}_000.png",
                    user_id=users[n % USERS].pk,
                    source="api" if n % 3 else "web",
                    latency_ms=float(40 + n % 17),
                    heatmaps={},
                    heatmap_data=pool[n % HEATMAP_POOL],
                    stored_sha256=f"{n + 1:064x}",
                    prev_hash=prev,
                )
                row.results_json = json.loads(json.dumps(row.results_json))
                row.chain_hash = compute_chain_hash(prev, row, keys)
                prev = row.chain_hash
                copy.write_row(
                    [
                        row.created_at,
                        row.model_id,
                        row.image_url,
                        json.dumps(row.results_json),
                        row.image_sha256,
                        row.file_name,
                        row.user_id,
                        row.source,
                        row.latency_ms,
                        "{}",
                        row.heatmap_data,
                        row.chain_version,
                        row.chain_key_id,
                        row.stored_sha256,
                        row.prev_hash,
                        row.chain_hash,
                    ]
                )
        written += batch
        print(f"filled {written}/{rows}", file=sys.stderr, flush=True)
    fill_s = time.perf_counter() - started
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE predictions")
    return {
        "fill_s": round(fill_s, 1),
        "fill_rows_per_s": round(rows / fill_s),
        "users": users,
        "versions": versions,
    }


def _temp_bytes() -> int:
    """Bytes Postgres has written to temp files in this database so far. Each backend reports its
    counts when idle or at exit (at most once a second): this one is made to now, and the others
    get a moment."""
    from django.db import connection

    time.sleep(1.5)
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_stat_force_next_flush()")
        cursor.execute("SELECT temp_bytes FROM pg_stat_database WHERE datname = current_database()")
        return int(cursor.fetchone()[0])


def _rss_mb() -> float:
    import psutil

    return round(psutil.Process().memory_info().rss / 2**20, 1)


def _measure(rows: int, filled: dict) -> dict:
    import datetime as dt

    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.core.management import call_command
    from django.db import connection
    from django.test import Client
    from rest_framework.authtoken.models import Token

    from audit.models import Prediction
    from audit.pagination import cursor_encode

    auditor = get_user_model().objects.create_user(username="auditor", password="x")
    auditor.groups.add(Group.objects.get(name="auditor"))
    clinician = filled["users"][0]
    client = Client()
    client.force_login(auditor)
    history_client = Client()
    history_client.force_login(clinician)

    def page(client, path, params=None, status=200):
        response = client.get(path, params or {})
        assert response.status_code == status, (path, params, response.status_code, response.content[:300])
        return response

    deep_row = Prediction.objects.order_by("id")[rows // 100 : rows // 100 + 1].get()  # 99 % deep
    deep = cursor_encode(deep_row)
    month_end = (deep_row.created_at + dt.timedelta(days=30)).date().isoformat()
    month_start = deep_row.created_at.date().isoformat()
    version = filled["versions"][0]
    own_deep = Prediction.objects.filter(user=clinician).order_by("id")[5:6].get()
    timings = {
        "audit_first_page_ms": lambda: page(client, "/audit/"),
        "audit_deep_page_ms": lambda: page(client, "/audit/", {"before": deep}),
        "audit_positive_finding_ms": lambda: page(client, "/audit/", {"finding": "Pneumothorax"}),
        "audit_positive_finding_deep_ms": lambda: page(
            client, "/audit/", {"finding": "Pneumothorax", "before": deep}
        ),
        "audit_30_day_range_ms": lambda: page(
            client, "/audit/", {"date_from": month_start, "date_to": month_end}
        ),
        "audit_model_version_ms": lambda: page(client, "/audit/", {"model": version.pk}),
        "audit_model_version_deep_ms": lambda: page(client, "/audit/", {"model": version.pk, "before": deep}),
        "audit_user_ms": lambda: page(client, "/audit/", {"user": clinician.username}),
        "audit_all_filters_ms": lambda: page(
            client,
            "/audit/",
            {
                "finding": "Pneumothorax",
                "model": version.pk,
                "user": clinician.username,
                "date_from": month_start,
                "date_to": month_end,
            },
        ),
        "history_first_page_ms": lambda: page(history_client, "/history/"),
        "history_deep_page_ms": lambda: page(
            history_client, "/history/", {"before": cursor_encode(own_deep)}
        ),
    }
    result = {name: _median_ms(fn) for name, fn in timings.items()}

    token, _ = Token.objects.get_or_create(user=auditor)
    api = Client(HTTP_AUTHORIZATION=f"Token {token.key}")
    for name, params in (
        ("api_list_first_page_ms", {}),
        ("api_list_model_ms", {"model": str(version.pk)}),
        # A DRF cursor (rest_framework.pagination.CursorPagination's own encoding) at the 99 % row.
        ("api_list_deep_page_ms", {"cursor": _drf_cursor(deep_row)}),
    ):
        try:
            result[name] = _median_ms(lambda params=params: page(api, "/api/v1/predictions/", params), runs=3)
        except AssertionError as exc:  # the API's list is another module's: report, do not stop
            result[name] = f"failed: {exc}"[:200]

    # CSV of everything: first data row, throughput, memory, Postgres temp files.
    temp_before, rss_before = _temp_bytes(), _rss_mb()
    started = time.perf_counter()
    response = page(client, "/audit/", {"format": "csv"})
    lines, first_row_s, size, rss_peak = 0, None, 0, rss_before
    for chunk in response.streaming_content:
        lines += chunk.count(b"\n")
        size += len(chunk)
        if first_row_s is None and lines >= 2:
            first_row_s = time.perf_counter() - started
        if lines % 50_000 == 0:
            rss_peak = max(rss_peak, _rss_mb())
    csv_s = time.perf_counter() - started
    result.update(
        {
            "csv_rows": lines - 2,
            "csv_first_row_s": round(first_row_s or 0, 3),
            "csv_s": round(csv_s, 1),
            "csv_rows_per_s": round((lines - 2) / csv_s),
            "csv_mb": round(size / 2**20, 1),
            "csv_rss_growth_mb": round(rss_peak - rss_before, 1),
            "csv_pg_temp_bytes": _temp_bytes() - temp_before,
        }
    )

    # verify_audit as a user runs it (one process per core, by id ranges), then in one process.
    import resource

    from audit.management.commands.verify_audit import default_jobs

    for key, jobs in (("verify", default_jobs(rows)), ("verify_one_process", 1)):
        temp_before, rss_before = _temp_bytes(), _rss_mb()
        out = io.StringIO()
        started = time.perf_counter()
        options = ["--skip-images", "--no-progress", "--no-checkpoint", "--jobs", str(jobs)]
        call_command("verify_audit", *options, stdout=out)
        verify_s = time.perf_counter() - started
        report = json.loads(out.getvalue())
        result.update(
            {
                f"{key}_jobs": jobs,
                f"{key}_ok": report["ok"],
                f"{key}_rows": report["rows"],
                f"{key}_s": round(verify_s, 1),
                f"{key}_rows_per_s": round(report["rows"] / verify_s),
                f"{key}_rss_growth_mb": round(_rss_mb() - rss_before, 1),
                f"{key}_pg_temp_bytes": _temp_bytes() - temp_before,
            }
        )
    # The largest resident size of any walking process (ru_maxrss is in KiB on Linux).
    child_max_kib = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result["verify_child_max_rss_mb"] = round(child_max_kib / 1024, 1)

    import numpy as np

    from analysis.results import results_json
    from audit.integrity import prediction_create_chained
    from audit.services import heatmap_data

    cams = np.zeros((13, 7, 7), np.float32)
    probabilities = np.full(13, 0.2, np.float32)

    def append():
        prediction_create_chained(
            stored_sha256="0" * 64,
            model=version,
            image_url="images/scale/append.png",
            results_json=results_json(version=version, probabilities=probabilities),
            image_sha256="0" * 64,
            user=clinician,
            heatmap_data=heatmap_data(cams=cams),
        )

    result["chain_append_ms"] = _median_ms(append, runs=20)

    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_relation_size('predictions'), pg_table_size('predictions'), "
            "pg_indexes_size('predictions'), pg_total_relation_size('predictions')"
        )
        heap, table, indexes, total = cursor.fetchone()
        cursor.execute("SELECT indexname FROM pg_indexes WHERE tablename = 'predictions' ORDER BY indexname")
        index_names = [name for (name,) in cursor.fetchall()]
    count = rows + 21
    result.update(
        {
            "table_bytes_per_row": round(table / count),  # heap + TOAST
            "heap_bytes_per_row": round(heap / count),
            "index_bytes_per_row": round(indexes / count),
            "total_mb": round(total / 2**20, 1),
            "indexes": index_names,
        }
    )
    return result


def _drf_cursor(row) -> str:
    """The `cursor` DRF's CursorPagination would put in a link to the page after `row`."""
    import base64
    from urllib.parse import urlencode

    return base64.b64encode(urlencode({"p": str(row.created_at)}).encode()).decode()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, required=True)
    parser.add_argument("--database-url", default=DEFAULT_URL)
    parser.add_argument("--keep", action="store_true", help="Keep the scratch database afterwards.")
    args = parser.parse_args()

    _create_database(args.database_url)
    os.environ["DATABASE_URL"] = args.database_url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lungsite.settings")
    os.environ.setdefault("DJANGO_HTTPS", "0")
    os.environ["DJANGO_ALLOWED_HOSTS"] = "testserver"  # django.test.Client's host
    # The bench fills and scans the whole table in single statements: no per-statement limit.
    os.environ["LUNGSITE_DB_STATEMENT_TIMEOUT_S"] = "0"
    # Checkpoints and images of the scratch log go to a scratch folder, not the real storage.
    import tempfile

    scratch = tempfile.mkdtemp(prefix="lungsite-audit-scale-")
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command

    settings.STORAGES["xray_images"] = {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": scratch},
    }
    # Pages render without `collectstatic` having run (as in the tests).
    settings.STORAGES["staticfiles"] = {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"}
    try:
        call_command("migrate", verbosity=0)
        started = time.perf_counter()
        filled = _fill(args.rows)
        result = {"rows": args.rows, "fill_s": filled["fill_s"], "fill_rows_per_s": filled["fill_rows_per_s"]}
        result.update(_measure(args.rows, filled))
        result["bench_s"] = round(time.perf_counter() - started, 1)
        print(json.dumps(result))
    finally:
        if not args.keep:
            _drop_database(args.database_url)


if __name__ == "__main__":
    main()
