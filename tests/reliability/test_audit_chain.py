"""The hash chain of the prediction log and `manage.py verify_audit`."""

from __future__ import annotations

import json
import threading
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection, connections, transaction

from audit.integrity import compute_chain_hash, prediction_create_chained
from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from tests.conftest import tamper_sql

ODD_NUMBERS = {"tiny": 1e-07, "big": 1e16, "negzero": -0.0, "one": 1.0, "third": 1 / 3, "int": 7}


FIXTURES = Path(__file__).resolve().parents[1] / "audit" / "fixtures"


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
    tamper_sql(
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
    tamper_sql("UPDATE predictions SET model_id = %s WHERE id = %s", [other.pk, rows[1].pk])
    report, _ = _verify("--skip-images")
    assert report["first_break"] == {
        "id": rows[1].pk,
        "kind": "altered",
        "message": report["first_break"]["message"],
    }


def test_it_finds_a_removed_row(version):
    rows = [_row(version, None, n) for n in range(5)]
    tamper_sql("DELETE FROM predictions WHERE id = %s", [rows[1].pk])
    report, error = _verify("--skip-images")
    assert error is not None
    assert report["rows"] == 4
    assert report["first_break"]["id"] == rows[2].pk  # the row whose predecessor is gone
    assert report["first_break"]["kind"] == "link"


def test_it_finds_a_removed_first_row(version):
    rows = [_row(version, None, n) for n in range(3)]
    tamper_sql("DELETE FROM predictions WHERE id = %s", [rows[0].pk])
    report, _ = _verify("--skip-images")
    assert report["first_break"]["id"] == rows[1].pk and report["first_break"]["kind"] == "link"


def test_it_finds_rows_cut_off_the_end_given_the_last_head(version):
    rows = [_row(version, None, n) for n in range(3)]
    report, _ = _verify("--skip-images")
    head = report["head"]
    tamper_sql("DELETE FROM predictions WHERE id = %s", [rows[2].pk])
    plain, error = _verify("--skip-images", "--no-checkpoint")
    assert error is None  # the chain alone cannot see a cut tail...
    report, error = _verify("--skip-images", "--no-checkpoint", "--expect-head", head)
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


def _record_predating_chain(through_id: int) -> None:
    from audit.models import ChainGenesis

    if not ChainGenesis.objects.exists():
        ChainGenesis.objects.create()
    ChainGenesis.objects.all().update(unchained_through_id=through_id)


def _record_keyed_from(first_id: int) -> None:
    from audit.models import ChainGenesis

    if not ChainGenesis.objects.exists():
        ChainGenesis.objects.create()
    ChainGenesis.objects.all().update(keyed_from_id=first_id)


def test_rows_from_before_the_chain_are_accepted_before_it(version):
    legacy = Prediction.objects.create(
        model=version, image_url="images/old.png", results_json={}, image_sha256="0" * 64
    )
    _record_predating_chain(legacy.pk)
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


@pytest.mark.parametrize("made_on", ["sqlite", "pg"])
def test_a_chain_written_by_the_old_code_still_verifies(db, django_user_model, made_on):
    """Rows written before chain version 2 (the plpgsql append function on Postgres, the EncodedMaps
    text splice on SQLite), kept as the database gave them back: the plain canonical JSON of
    today's code hashes them to the same chain hashes."""
    from audit.integrity import chain_body

    fixture = json.loads((FIXTURES / f"chain_v1_made_on_{made_on}.json").read_text())
    old = ModelVersion.objects.create(id=1, storage_path="weights/old.pt", **fixture["version"])
    django_user_model.objects.create_user(id=1, username="old-user", password="x")
    storage = storages["xray_images"]
    for fields in fixture["rows"]:
        fields = dict(fields)
        storage.save(fields["image_url"], ContentFile(fields.pop("image_data").encode()))
        row = Prediction(chain_version=1, **fields)
        row.created_at = datetime.fromisoformat(fields["created_at"])
        assert row.model_id == old.pk
        assert compute_chain_hash(row.prev_hash, row) == row.chain_hash  # before it is even stored
        row.save(force_insert=True)
    for row in Prediction.objects.order_by("id"):
        assert row.chain_version == 1 and compute_chain_hash(row.prev_hash, row) == row.chain_hash
        assert chain_body(row).startswith('{"created_at":')
    # As migration 0013 records it on a database holding these rows: later rows must be keyed.
    _record_keyed_from(fixture["rows"][-1]["id"] + 1)
    report, error = _verify()
    assert error is None and report["ok"] is True and report["rows"] == 5, report

    # New rows (chain version 3, keyed) continue the old chain.
    new = _row(old, None, 9)
    assert new.chain_version == 3 and new.prev_hash == fixture["rows"][-1]["chain_hash"]
    report, error = _verify("--skip-images")
    assert error is None and report["rows"] == 6, report

    tamper_sql("UPDATE predictions SET latency_ms = 1 WHERE id = %s", [fixture["rows"][2]["id"]])
    report, error = _verify("--skip-images")
    assert error is not None and report["first_break"]["kind"] == "altered"
    assert report["first_break"]["id"] == fixture["rows"][2]["id"]


def test_rows_blanked_of_their_chain_fail_verification(version):
    rows = [_row(version, None, n) for n in range(3)]
    # Blanking every hash (as a superuser could) no longer passes for "written before the chain".
    tamper_sql("UPDATE predictions SET chain_hash = '', prev_hash = '', stored_sha256 = ''")
    tamper_sql("UPDATE predictions SET latency_ms = 999 WHERE id = %s", [rows[1].pk])
    report, error = _verify("--skip-images", "--no-checkpoint")
    assert error is not None and report["ok"] is False
    assert report["first_break"] == {
        "id": rows[0].pk,
        "kind": "unchained",
        "message": "row has no chain hash and is not recorded as written before the chain existed",
    }
    assert report["breaks"] == 3


def test_heatmap_bytes_are_part_of_what_the_chain_proves(version):
    from audit.services import heatmap_data

    cams = np.linspace(0, 3, 13 * 49, dtype=np.float32).reshape(13, 7, 7)
    row = prediction_create_chained(
        stored_data=b"x",
        model=version,
        image_url=storages["xray_images"].save("images/test/bytes.png", ContentFile(b"x")),
        results_json={"findings": [{"name": n, "probability": 0.1} for n in DEFAULT_CLASS_NAMES]},
        image_sha256="0" * 64,
        file_name="chest.png",
        heatmap_data=heatmap_data(cams=cams),
    )
    stored = Prediction.objects.get(pk=row.pk)
    assert stored.chain_version == 3 and stored.heatmaps == {}
    assert len(bytes(stored.heatmap_data)) == 10 + 13 * 4 + 13 * 49  # header, scales, uint8 maps
    maps = stored.heatmap_maps()
    assert list(maps) == DEFAULT_CLASS_NAMES
    decoded = np.asarray(list(maps.values()))
    # uint8 levels of each map's own maximum: within half a level (max / 510) of the raw map
    half_level = cams.reshape(13, -1).max(axis=1)[:, None, None] / 510
    assert (np.abs(decoded - cams) <= half_level * 1.001 + 1e-7).all()
    report, error = _verify("--skip-images")
    assert error is None, report

    flipped = bytearray(bytes(stored.heatmap_data))
    flipped[-1] ^= 0x01
    tamper_sql("UPDATE predictions SET heatmap_data = %s WHERE id = %s", [bytes(flipped), row.pk])
    report, error = _verify("--skip-images", "--no-checkpoint")
    assert error is not None and report["first_break"]["kind"] == "altered", report

    with pytest.raises(ValueError, match="non-finite"):
        heatmap_data(cams=np.full((13, 7, 7), np.inf, dtype=np.float32))


def test_it_finds_rows_cut_from_the_end_by_the_checkpoint(version):
    from audit.checkpoints import checkpoint_latest

    rows = [_row(version, None, n) for n in range(4)]
    report, error = _verify("--skip-images")
    assert error is None and report["checkpoint"] is None
    latest = checkpoint_latest()
    assert latest["last_id"] == rows[-1].pk and latest["head"] == rows[-1].chain_hash and latest["rows"] == 4

    tamper_sql("DELETE FROM predictions WHERE id >= %s", [rows[2].pk])  # the chain that is left is intact
    report, error = _verify("--skip-images")
    assert error is not None and report["ok"] is False
    assert report["first_break"]["kind"] == "truncated" and report["first_break"]["id"] == rows[-1].pk


def test_appends_write_a_checkpoint_every_n_ids(version, settings, django_capture_on_commit_callbacks):
    from audit.checkpoints import CHECKPOINT_DIR

    settings.LUNGSITE_AUDIT_CHECKPOINT_EVERY = 2
    with django_capture_on_commit_callbacks(execute=True):
        rows = [_row(version, None, n) for n in range(5)]
    _, names = storages["xray_images"].listdir(CHECKPOINT_DIR)
    # A checkpoint at each row whose id passes a multiple of 2 since the row before it (the first
    # row passes them all: the ids of a fresh Postgres test database need not start at 1).
    previous = [0] + [row.pk for row in rows[:-1]]
    passing = [row for row, before in zip(rows, previous, strict=True) if row.pk // 2 > before // 2]
    assert len(passing) >= 2
    assert sorted(names) == sorted(f"{row.pk:019d}-{row.chain_hash[:16]}.json" for row in passing)


@pytest.mark.skipif(connection.vendor != "postgresql", reason="the TRUNCATE trigger exists on Postgres only")
def test_truncate_is_refused_on_postgres(version):
    from django.db import DatabaseError

    _row(version, None, 0)
    with (
        pytest.raises(DatabaseError, match="TRUNCATE refused"),
        transaction.atomic(),
        connection.cursor() as cursor,
    ):
        cursor.execute("SET CONSTRAINTS ALL IMMEDIATE")  # no pending foreign-key checks of this test
        cursor.execute("SET LOCAL lungsite.enforce_truncate_guard = 'on'")
        cursor.execute("TRUNCATE predictions CASCADE")
    assert Prediction.objects.count() == 1
