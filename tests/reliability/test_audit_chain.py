"""The hash chain of the prediction log and `manage.py verify_audit`."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from audit.integrity import compute_chain_hash, prediction_create_chained
from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

ODD_NUMBERS = {"tiny": 1e-07, "big": 1e16, "negzero": -0.0, "one": 1.0, "third": 1 / 3, "int": 7}


@pytest.fixture
def version(db):
    return ModelVersion.objects.create(
        version_name="chain-test",
        storage_path="weights/x.pt",
        sha256="a" * 64,
        class_names=DEFAULT_CLASS_NAMES,
    )


def _row(version, user=None, n: int = 0) -> Prediction:
    data = f"image {n}".encode()
    name = storages["xray_images"].save(f"images/test/{n}.png", ContentFile(data))
    return prediction_create_chained(
        stored_data=data,
        model=version,
        image_url=name,
        results_json={
            "model": {"id": version.pk},
            "findings": [{"name": "Mass", "probability": 0.25 + n / 100}],
            **ODD_NUMBERS,
        },
        image_sha256=f"{n:064x}",
        user=user,
        source=Prediction.SOURCE_API,
        latency_ms=12.5 + n,
        heatmaps={"Mass": [[0.0, 1e-05], [0.5, 1.0]]},
    )


def _verify(*args) -> tuple[dict, CommandError | None]:
    from io import StringIO

    out = StringIO()
    try:
        call_command("verify_audit", *args, stdout=out)
        error = None
    except CommandError as exc:
        error = exc
    return json.loads(out.getvalue()), error


def _raw(sql: str, params=()) -> None:
    """Tampering as someone with a database connection would: on Postgres past the trigger."""
    with transaction.atomic(), connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            # Fire the deferred foreign-key checks of this test's inserts: ALTER TABLE refuses to run
            # with trigger events pending.
            cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")
            cursor.execute("ALTER TABLE predictions DISABLE TRIGGER predictions_append_only")
        cursor.execute(sql, params)
        if connection.vendor == "postgresql":
            cursor.execute("ALTER TABLE predictions ENABLE TRIGGER predictions_append_only")


def test_it_links_each_row_to_the_previous_one(version, clinician):
    rows = [_row(version, clinician, n) for n in range(4)]
    assert rows[0].prev_hash == ""
    for before, after in zip(rows, rows[1:], strict=False):
        assert after.prev_hash == before.chain_hash
    # What the database gives back hashes to what was stored (jsonb rewrites numbers, -0.0, key order).
    for row in Prediction.objects.order_by("id"):
        assert compute_chain_hash(row.prev_hash, row) == row.chain_hash
        assert row.stored_sha256 and row.created_at


@pytest.mark.parametrize(
    "heatmaps",
    [
        {"Mass": [[-0.0, 1e16], [2.5e-300, 0.125]]},  # plain floats: kept as they are
        {"Mass": ((0, 1), (0.5, 2))},  # tuples and ints: through the JSON round trip
        {7: [[0.25]]},  # a key JSON turns into a string
    ],
    ids=["plain-floats", "tuples-and-ints", "int-key"],
)
def test_heatmaps_of_any_json_shape_hash_as_the_database_returns_them(version, heatmaps):
    row = prediction_create_chained(
        stored_data=b"x",
        model=version,
        image_url=storages["xray_images"].save("images/test/shape.png", ContentFile(b"x")),
        results_json={"findings": []},
        image_sha256="0" * 64,
        source=Prediction.SOURCE_API,
        heatmaps=heatmaps,
    )
    stored = Prediction.objects.get(pk=row.pk)
    assert compute_chain_hash(stored.prev_hash, stored) == row.chain_hash == stored.chain_hash
    assert stored.heatmaps == json.loads(json.dumps(heatmaps))
    report, error = _verify()
    assert error is None and report["ok"] is True


def _maps_the_long_way(names, maps) -> dict:
    return {
        n: [[float(f"{v:.6g}") for v in row] for row in cam.tolist()]
        for n, cam in zip(names, maps, strict=True)
    }


_EDGES = [
    0.0,
    -0.0,
    1.0,
    2.0,
    0.5,
    1e-4,
    9.99999e-5,
    1e-5,
    1.5e-5,
    1e-7,
    123456.0,
    123456.7,
    999999.2,
    1e-38,
    1.4e-45,
    0.1,
    0.3,
    99999.95,
    9.999995,
    1234.5678,
]


def test_encoded_maps_are_the_long_ways_values_and_canonical_json():
    from audit.integrity import _canonical, encoded_maps

    rng = np.random.default_rng(7)
    names = [f"finding {i} \u00e9" for i in range(13)][::-1]  # unsorted, not ASCII
    cases = [np.array(_EDGES * 8, dtype=np.float32)[: 13 * 12].reshape(13, 3, 4)]
    for scale in (1e-8, 1e-3, 1.0, 1e3, 1e5):
        cases.append(rng.random((13, 7, 7), dtype=np.float32) * np.float32(scale))
    cases.append(np.maximum(rng.standard_normal((13, 7, 7)).astype(np.float32), 0))  # many zeros
    for maps in cases:
        encoded = encoded_maps(names, maps)
        long_way = _maps_the_long_way(names, maps)
        assert encoded == long_way  # -0.0 == 0.0: the one value that may differ is its sign
        assert all(type(v) is float for m in encoded.values() for row in m for v in row)
        assert encoded.canonical == json.dumps(
            _canonical(long_way), sort_keys=True, separators=(",", ":"), ensure_ascii=True
        )
    # Where %.6g is not the canonical text, or JSON cannot hold the value: the long way.
    for bad in (1e6, 999999.6, -0.5, np.nan, np.inf):
        maps = np.full((13, 2, 2), 0.25, dtype=np.float32)
        maps[3, 1, 0] = bad
        assert encoded_maps(names, maps) is None
    assert encoded_maps(names[:12], np.zeros((13, 2, 2), np.float32)) is None
    assert encoded_maps(names, np.zeros((13, 2, 2), np.float64)) is None


def test_rows_with_encoded_maps_hash_as_the_database_returns_them(version):
    from audit.integrity import EncodedMaps
    from audit.services import heatmaps_json

    maps = np.array(_EDGES * 40, dtype=np.float32)[: 13 * 49].reshape(13, 7, 7)
    rows = []
    for n in range(3):
        heatmaps = heatmaps_json(class_names=DEFAULT_CLASS_NAMES, cams=maps * np.float32((n + 1) / 3))
        assert type(heatmaps) is EncodedMaps
        rows.append(
            prediction_create_chained(
                stored_data=b"x",
                model=version,
                image_url=storages["xray_images"].save(f"images/test/enc{n}.png", ContentFile(b"x")),
                results_json={"findings": []},
                image_sha256="0" * 64,
                source=Prediction.SOURCE_API,
                heatmaps=heatmaps,
            )
        )
    for row in rows:
        stored = Prediction.objects.get(pk=row.pk)
        assert compute_chain_hash(stored.prev_hash, stored) == row.chain_hash == stored.chain_hash
        assert stored.heatmaps == dict(row.heatmaps)
        with connection.cursor() as cursor:  # inserted as its canonical text, not encoded again
            cursor.execute(f"SELECT heatmaps FROM {Prediction._meta.db_table} WHERE id = %s", [row.pk])
            text = cursor.fetchone()[0]
        assert (json.loads(text) if isinstance(text, str) else text) == json.loads(row.heatmaps.canonical)
        if connection.vendor == "sqlite":
            assert text == row.heatmaps.canonical
    report, error = _verify()
    assert error is None and report["ok"] is True and report["rows"] == 3


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the one-call append is Postgres's")
def test_on_postgres_a_chained_insert_is_one_round_trip(version, clinician):
    import importlib

    from django.test.utils import CaptureQueriesContext

    from audit.integrity import _ADVISORY_LOCK_KEY

    first = _row(version, clinician, 0)
    with CaptureQueriesContext(connection) as queries:
        second = _row(version, clinician, 1)
    appends = [q["sql"] for q in queries.captured_queries if "lungsite_chain_append" in q["sql"]]
    assert len(appends) == 1 and len(queries.captured_queries) == 1, queries.captured_queries
    assert second.pk > first.pk and second.prev_hash == first.chain_hash
    stored = Prediction.objects.get(pk=second.pk)
    assert compute_chain_hash(stored.prev_hash, stored) == stored.chain_hash == second.chain_hash
    # The function locks the key the rest of the code documents.
    migration = importlib.import_module("audit.migrations.0005_chain_append_function")
    assert f"pg_advisory_xact_lock({_ADVISORY_LOCK_KEY})" in migration.CREATE


def test_a_clean_chain_verifies(version, clinician):
    rows = [_row(version, clinician, n) for n in range(5)]
    report, error = _verify()
    assert error is None
    assert report["ok"] is True and report["first_break"] is None
    assert report["rows"] == report["chained"] == 5 and report["images_checked"] == 5
    assert report["head"] == rows[-1].chain_hash


def test_an_empty_log_verifies(db):
    report, error = _verify()
    assert error is None and report["rows"] == 0 and report["ok"] is True


def test_it_finds_an_altered_row(version):
    rows = [_row(version, None, n) for n in range(5)]
    _raw(
        "UPDATE predictions SET results_json = %s WHERE id = %s",
        [json.dumps({"findings": [{"name": "Mass", "probability": 0.99}]}), rows[2].pk],
    )
    report, error = _verify("--skip-images")
    assert error is not None and error.returncode == 1
    assert report["ok"] is False
    assert report["first_break"]["id"] == rows[2].pk
    assert report["first_break"]["kind"] == "altered"
    assert report["breaks"] == 1  # one tampered row is reported once, not at every row after it


def test_it_finds_a_row_reassigned_to_another_model(version):
    other = ModelVersion.objects.create(
        version_name="other", storage_path="weights/y.pt", sha256="b" * 64, class_names=DEFAULT_CLASS_NAMES
    )
    rows = [_row(version, None, n) for n in range(3)]
    _raw("UPDATE predictions SET model_id = %s WHERE id = %s", [other.pk, rows[1].pk])
    report, _ = _verify("--skip-images")
    assert report["first_break"] == {
        "id": rows[1].pk,
        "kind": "altered",
        "message": report["first_break"]["message"],
    }


def test_it_finds_a_removed_row(version):
    rows = [_row(version, None, n) for n in range(5)]
    _raw("DELETE FROM predictions WHERE id = %s", [rows[1].pk])
    report, error = _verify("--skip-images")
    assert error is not None
    assert report["rows"] == 4
    assert report["first_break"]["id"] == rows[2].pk  # the row whose predecessor is gone
    assert report["first_break"]["kind"] == "link"


def test_it_finds_a_removed_first_row(version):
    rows = [_row(version, None, n) for n in range(3)]
    _raw("DELETE FROM predictions WHERE id = %s", [rows[0].pk])
    report, _ = _verify("--skip-images")
    assert report["first_break"]["id"] == rows[1].pk and report["first_break"]["kind"] == "link"


def test_it_finds_rows_cut_off_the_end_given_the_last_head(version):
    rows = [_row(version, None, n) for n in range(3)]
    report, _ = _verify("--skip-images")
    head = report["head"]
    _raw("DELETE FROM predictions WHERE id = %s", [rows[2].pk])
    plain, error = _verify("--skip-images")
    assert error is None  # the chain alone cannot see a cut tail...
    report, error = _verify("--skip-images", "--expect-head", head)
    assert error is not None  # ...the head recorded earlier can
    assert report["first_break"]["kind"] == "truncated"


def test_it_finds_a_row_written_around_the_chain(version):
    _row(version, None, 0)
    intruder = Prediction.objects.create(
        model=version, image_url="images/x.png", results_json={}, image_sha256="0" * 64
    )
    report, _ = _verify("--skip-images")
    assert report["first_break"]["id"] == intruder.pk
    assert report["first_break"]["kind"] == "unchained"


def test_rows_from_before_the_chain_are_accepted_before_it(version):
    legacy = Prediction.objects.create(
        model=version, image_url="images/old.png", results_json={}, image_sha256="0" * 64
    )
    _row(version, None, 1)
    report, error = _verify("--skip-images")
    assert error is None, report
    assert report["unchained"] == 1 and report["chained"] == 1 and legacy.chain_hash == ""


def test_it_reports_a_missing_and_a_corrupted_image(version):
    rows = [_row(version, None, n) for n in range(4)]
    storage = storages["xray_images"]
    with open(storage.path(rows[1].image_url), "ab") as handle:
        handle.write(b"tampered")
    storage.delete(rows[3].image_url)

    report, error = _verify()
    assert error is not None
    assert report["first_break"]["id"] == rows[1].pk
    assert report["first_break"]["kind"] == "image_altered"
    assert report["images_bad"] == 2 and report["breaks"] == 2

    storage.delete(rows[1].image_url)
    report, _ = _verify()
    assert report["first_break"]["kind"] == "image_missing"

    report, error = _verify("--skip-images")
    assert error is None and report["ok"] is True


def test_it_refuses_fields_that_the_chain_sets(version):
    with pytest.raises(TypeError):
        prediction_create_chained(
            model=version, image_url="x", results_json={}, image_sha256="0", chain_hash="f"
        )


@pytest.mark.skipif(connection.vendor != "postgresql", reason="concurrent writers need a server database")
@pytest.mark.django_db(transaction=True)
def test_concurrent_writers_do_not_fork_the_chain(version):
    errors = []

    def writer(k: int) -> None:
        try:
            for n in range(8):
                _row(version, None, 100 * k + n)
        except Exception as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    report, error = _verify()
    assert error is None, report
    assert report["rows"] == 32 and report["ok"] is True
    prevs = list(Prediction.objects.values_list("prev_hash", flat=True))
    assert len(set(prevs)) == 32  # a fork would give two rows the same predecessor


def test_predictions_made_through_the_api_join_the_chain(token_client, clinician, starter_model):
    import hashlib

    from PIL import Image

    from tests.reliability import corpus
    from tests.reliability.conftest import post_image

    api = token_client(clinician)
    jpeg_with_exif = corpus.exif_jpeg(corpus.PATIENT)  # stored without its metadata: other bytes
    dicom = corpus.dicom(corpus.chest_like(64), patient_name=corpus.PATIENT)  # stored as a PNG
    png = corpus.pil_bytes(Image.fromarray(corpus.chest_like(64)), "PNG")
    for data, name in ((jpeg_with_exif, "a.jpg"), (dicom, "b.dcm"), (png, "c.png")):
        assert post_image(api, data, name).status_code == 201
    rows = list(Prediction.objects.order_by("id"))
    assert [bool(row.chain_hash) for row in rows] == [True, True, True]
    for row in rows:
        with storages["xray_images"].open(row.image_url, "rb") as handle:
            stored = handle.read()
        assert row.stored_sha256 == hashlib.sha256(stored).hexdigest()
    assert rows[0].stored_sha256 != rows[0].image_sha256  # the upload's hash is kept apart
    report, error = _verify()
    assert error is None and report["rows"] == 3 and report["images_checked"] == 3, report
