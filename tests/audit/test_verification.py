"""verify_audit's walk in id ranges (audit.verification) and the one-pass canonical JSON parse
(audit.integrity.json_canonical)."""

from __future__ import annotations

import json
from io import StringIO

import pytest
from django.core.files.base import ContentFile
from django.core.files.storage import storages
from django.core.management import CommandError, call_command
from django.db import connection

from audit.integrity import _canonical, json_canonical, prediction_create_chained
from audit.models import Prediction
from audit.verification import id_ranges, range_verify
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion
from tests.conftest import tamper_sql

JSON_TEXTS = [
    '{"a": 1.0, "b": -0.0, "c": 1e16, "d": 1e-07, "e": 0.3333333333333333, "f": 7, "g": -3}',
    '{"findings": [{"name": "Mass", "probability": 0.25, "positive": false}], "untrained": true}',
    "[1.5e300, 2.0e-300, 12345678901234567890, 123456789012345678901234567890.5, 100.000]",
    '{"caf\\u00e9": "na\\u00efve \\ud83e\\udec1", "nested": [[0.0, 1e-05], [0.5, 1.0]], "n": null}',
    "{}",
    "null",
]


@pytest.mark.parametrize("text", JSON_TEXTS)
def test_json_canonical_is_the_general_canonical_form(text):
    fast, general = json_canonical(text), _canonical(json.loads(text))
    assert fast == general
    # Same types too (1.0 must become the int 1 in both): their JSON texts are identical.
    assert json.dumps(fast, sort_keys=True) == json.dumps(general, sort_keys=True)


@pytest.mark.parametrize("text", ['{"a": NaN}', "[Infinity]", "[1e400]", "[-1e400]"])
def test_json_canonical_refuses_non_finite_numbers(text):
    with pytest.raises(ValueError, match="non-finite"):
        json_canonical(text)
    with pytest.raises(ValueError, match="non-finite"):
        _canonical(json.loads(text))


@pytest.fixture
def version(db):
    return ModelVersion.objects.create(
        version_name="ranges", storage_path="weights/r.pt", sha256="b" * 64, class_names=DEFAULT_CLASS_NAMES
    )


def _rows(version, count: int) -> list[Prediction]:
    rows = []
    for n in range(count):
        data = f"image {n}".encode()
        name = storages["xray_images"].save(f"images/ranges/{n}.png", ContentFile(data))
        rows.append(
            prediction_create_chained(
                stored_data=data,
                model=version,
                image_url=name,
                results_json={"findings": [{"name": "Mass", "probability": n / 40, "positive": n % 2 == 0}]},
                image_sha256=f"{n:064x}",
                heatmap_data=bytes([n % 256]) * 16,
                latency_ms=float(n),
            )
        )
    return rows


def test_id_ranges_cover_every_id_once(version):
    rows = _rows(version, 10)
    ranges = id_ranges(using="default", jobs=3)
    assert len(ranges) == 3 and ranges[0][0] == rows[0].pk - 1 and ranges[-1][1] is None
    for (_, through), (after, _) in zip(ranges, ranges[1:], strict=False):
        assert through == after
    assert id_ranges(using="default", jobs=1) == [(0, None)]


def test_walks_over_consecutive_ranges_check_every_link(version):
    rows = _rows(version, 9)
    ranges = id_ranges(using="default", jobs=3)
    reports = [range_verify(after_id=a, through_id=t, check_images=True) for a, t in ranges]
    assert [report.rows for report in reports] == [3, 3, 3]
    assert all(report.breaks == 0 for report in reports)
    assert reports[-1].head == rows[-1].chain_hash

    # The first row of the second range removed: its range finds the link to the row before broken.
    boundary = ranges[1][0] + 1
    tamper_sql("DELETE FROM predictions WHERE id = %s", [boundary])
    report = range_verify(after_id=ranges[1][0], through_id=ranges[1][1], check_images=False)
    assert report.first_break["kind"] == "link" and report.first_break["id"] == boundary + 1


def _verify(*args) -> tuple[dict, CommandError | None]:
    out = StringIO()
    try:
        call_command("verify_audit", "--no-progress", *args, stdout=out)
        return json.loads(out.getvalue()), None
    except CommandError as exc:
        return json.loads(out.getvalue()), exc


@pytest.mark.django_db(transaction=True)
def test_verify_audit_in_processes_finds_tampering_in_the_middle_and_at_the_end(version):
    rows = _rows(version, 30)
    report, error = _verify("--jobs", "3")
    assert error is None and report["ok"] and report["rows"] == 30 and report["images_checked"] == 30
    assert report["head"] == rows[-1].chain_hash

    # A checkpoint now records 30 rows: a later verify that walks the same rows agrees.
    report, error = _verify("--jobs", "3")
    assert error is None and report["checkpoint"]["rows"] == 30

    middle, last = rows[14], rows[-1]
    if connection.vendor == "postgresql":
        altered = "jsonb_set(results_json, '{findings,0,probability}', '0.99')"
    else:
        altered = "json_set(results_json, '$.findings[0].probability', 0.99)"
    tamper_sql(f"UPDATE predictions SET results_json = {altered} WHERE id IN (%s, %s)", [middle.pk, last.pk])
    report, error = _verify("--jobs", "3", "--skip-images")
    assert error is not None and error.returncode == 1
    assert report["breaks"] == 2 and report["first_break"] == {
        "id": middle.pk,
        "kind": "altered",
        "message": report["first_break"]["message"],
    }
    single, _ = _verify("--jobs", "1", "--skip-images")
    assert {key: single[key] for key in ("rows", "breaks", "first_break")} == {
        key: report[key] for key in ("rows", "breaks", "first_break")
    }


@pytest.mark.django_db(transaction=True)
def test_verify_audit_in_processes_finds_rows_cut_from_the_end(version):
    rows = _rows(version, 12)
    report, error = _verify("--jobs", "2", "--skip-images")
    assert error is None and report["ok"]
    tamper_sql("DELETE FROM predictions WHERE id >= %s", [rows[-2].pk])
    report, error = _verify("--jobs", "2", "--skip-images")
    assert error is not None and report["first_break"]["kind"] == "truncated"
    assert report["rows"] == 10
