"""The audit log `/audit/`: auditors and superusers only; filters; CSV export of the filtered rows."""

import csv
import hashlib
import io
from datetime import UTC, datetime

import pytest
from django.urls import reverse

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


def _version(name="v1", class_names=DEFAULT_CLASS_NAMES, active=False) -> ModelVersion:
    return ModelVersion.objects.create(
        version_name=name,
        storage_path=f"{name}.pt",
        class_names=list(class_names),
        sha256=(name.encode().hex() + "0" * 64)[:64],
        is_active=active,
    )


def _prediction(user, version, probabilities=None, *, source="web", when=None) -> Prediction:
    probabilities = probabilities or {}
    findings = [
        {"name": name, "probability": p, "threshold": 0.5, "positive": p >= 0.5}
        for name, p in ((name, probabilities.get(name, 0.1)) for name in version.class_names)
    ]
    fields = dict(
        model=version,
        user=user,
        source=source,
        image_url="x.png",
        image_sha256="e" * 64,
        latency_ms=250.0,
        results_json={"findings": findings, "untrained": False},
    )
    if when is not None:
        fields["created_at"] = when
    return Prediction.objects.create(**fields)


def _ids(html: str) -> list[int]:
    return [int(part.split('/"', 1)[0]) for part in html.split('href="/predictions/')[1:]]


def _csv(response) -> list[dict]:
    assert response.status_code == 200
    assert response["Content-Type"] == "text/csv; charset=utf-8"
    assert response["Content-Disposition"].startswith('attachment; filename="lungsite-audit-')
    text = b"".join(response.streaming_content).decode()
    body, trailer = text.rsplit("# end: ", 1)
    count, digest = trailer.strip().split(" rows, sha256 ")
    assert digest == hashlib.sha256(body.encode()).hexdigest()
    rows = list(csv.DictReader(io.StringIO(body)))
    assert len(rows) == int(count)
    return rows


def test_it_sends_anonymous_users_to_login(client, db):
    response = client.get("/audit/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/audit/"


@pytest.mark.parametrize("role", ["clinician", "model_admin"])
def test_it_refuses_users_who_are_not_auditors(client, db, role, request):
    # `db` named here: pytest-django orders tests by the fixtures they name, and one that reaches
    # the database only through getfixturevalue would run after the transactional browser test.
    client.force_login(request.getfixturevalue(role))
    assert client.get("/audit/").status_code == 403
    assert client.get("/audit/", {"format": "csv"}).status_code == 403


@pytest.mark.parametrize("role", ["auditor", "superuser"])
def test_it_shows_every_prediction_to_auditors(client, clinician, other_clinician, role, request):
    version = _version()
    mine = _prediction(clinician, version, {"Edema": 0.7})
    theirs = _prediction(other_clinician, version, source="api")
    client.force_login(request.getfixturevalue(role))
    response = client.get("/audit/")
    html = response.content.decode()

    assert response.status_code == 200
    assert _ids(html) == [theirs.pk, mine.pk]
    assert ">alice<" in html and ">bob<" in html
    assert ">api<" in html and ">web<" in html
    assert "250 ms" in html and "v1" in html and "Edema" in html


def test_it_filters_by_user_and_model_version(client, auditor, clinician, other_clinician):
    v1, v2 = _version("v1", active=True), _version("v2")
    a1 = _prediction(clinician, v1)
    a2 = _prediction(clinician, v2)
    b1 = _prediction(other_clinician, v1)
    client.force_login(auditor)

    assert _ids(client.get("/audit/", {"user": "alice"}).content.decode()) == [a2.pk, a1.pk]
    assert _ids(client.get("/audit/", {"model": v1.pk}).content.decode()) == [b1.pk, a1.pk]
    assert _ids(client.get("/audit/", {"user": "alice", "model": v1.pk}).content.decode()) == [a1.pk]
    assert _ids(client.get("/audit/", {"user": "nobody"}).content.decode()) == []


def test_it_filters_by_date_range_inclusive(client, auditor, clinician):
    version = _version()
    old = _prediction(clinician, version, when=datetime(2026, 1, 10, 23, 59, tzinfo=UTC))
    mid = _prediction(clinician, version, when=datetime(2026, 2, 1, 0, 0, tzinfo=UTC))
    new = _prediction(clinician, version, when=datetime(2026, 3, 5, 12, 0, tzinfo=UTC))
    client.force_login(auditor)

    assert _ids(client.get("/audit/", {"date_from": "2026-02-01"}).content.decode()) == [new.pk, mid.pk]
    assert _ids(client.get("/audit/", {"date_to": "2026-01-10"}).content.decode()) == [old.pk]
    both = {"date_from": "2026-01-10", "date_to": "2026-02-01"}
    assert _ids(client.get("/audit/", both).content.decode()) == [mid.pk, old.pk]


def test_it_refuses_an_inverted_date_range(client, auditor, clinician):
    _prediction(clinician, _version())
    client.force_login(auditor)
    response = client.get("/audit/", {"date_from": "2026-03-01", "date_to": "2026-02-01"})
    assert response.status_code == 400
    html = response.content.decode()
    assert "The end date is before the start date." in html
    assert _ids(html) == [] and "format=csv" not in html  # no export link for filters that are wrong


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ({"date_from": "2026-13-45"}, "From (YYYY-MM-DD): Enter a valid date."),
        ({"date_to": "yesterday"}, "To (YYYY-MM-DD): Enter a valid date."),
        ({"date_from": "2026-03-01", "date_to": "2026-02-01"}, "The end date is before the start date."),
    ],
)
def test_it_refuses_to_export_with_a_malformed_filter(client, auditor, clinician, query, message):
    _prediction(clinician, _version())
    client.force_login(auditor)
    response = client.get("/audit/", {**query, "format": "csv"})
    assert response.status_code == 400
    assert response["Content-Type"] == "text/plain; charset=utf-8"
    body = response.content.decode()
    assert body.startswith("The audit filters are not valid, so nothing was exported.")
    assert message in body and "# end:" not in body


def test_it_filters_by_positive_finding_across_versions(client, auditor, clinician):
    # Two versions whose outputs are ordered differently: the filter must follow each one's order.
    v1 = _version("v1")
    v2 = _version("v2", class_names=list(reversed(DEFAULT_CLASS_NAMES)))
    positive_v1 = _prediction(clinician, v1, {"Edema": 0.9})
    positive_v2 = _prediction(clinician, v2, {"Edema": 0.51})
    _prediction(clinician, v1, {"Edema": 0.49, "Mass": 0.8})
    _prediction(clinician, v2, {"Mass": 0.8})
    client.force_login(auditor)

    html = client.get("/audit/", {"finding": "Edema"}).content.decode()
    assert _ids(html) == [positive_v2.pk, positive_v1.pk]
    assert len(_ids(client.get("/audit/", {"finding": "Mass"}).content.decode())) == 2
    assert _ids(client.get("/audit/", {"finding": "Hernia"}).content.decode()) == []


def test_it_exports_the_filtered_rows_as_csv(client, auditor, clinician, other_clinician):
    version = _version("v1")
    a = _prediction(clinician, version, {"Edema": 0.875})
    _prediction(other_clinician, version)
    client.force_login(auditor)

    rows = _csv(client.get("/audit/", {"user": "alice", "format": "csv"}))
    assert len(rows) == 1
    row = rows[0]
    assert list(row)[:10] == [
        "id",
        "created_at",
        "user",
        "source",
        "model_version",
        "model_sha256",
        "untrained",
        "latency_ms",
        "file_name",
        "image_sha256",
    ]
    assert list(row)[10:] == [
        column for name in DEFAULT_CLASS_NAMES for column in (name, f"{name} threshold", f"{name} positive")
    ]
    assert row["untrained"] == "no" and row["Edema positive"] == "yes" and row["Mass positive"] == "no"
    assert float(row["Edema threshold"]) == 0.5
    assert row["id"] == str(a.pk) and row["user"] == "alice" and row["source"] == "web"
    assert row["model_version"] == "v1" and row["model_sha256"] == version.sha256
    assert row["latency_ms"] == "250.0" and row["image_sha256"] == "e" * 64
    assert float(row["Edema"]) == 0.875 and float(row["Mass"]) == 0.1
    assert datetime.fromisoformat(row["created_at"]) == a.created_at

    assert len(_csv(client.get("/audit/", {"format": "csv"}))) == 2


def test_a_long_export_streams_in_pieces_with_every_row_and_number_as_stored(client, auditor, clinician):
    from audit.views import CSV_LINES_PER_CHUNK

    version = _version("v1")
    count = CSV_LINES_PER_CHUNK * 2 + 7
    stored = [0.12345670163631439 + n / 10_000 for n in range(count)]
    for probability in stored:
        _prediction(clinician, version, {"Edema": probability})
    client.force_login(auditor)

    response = client.get("/audit/", {"format": "csv"})
    pieces = list(response.streaming_content)
    assert len(pieces) >= 4  # the header, two full pieces, the rest and the trailer
    response.streaming_content = iter(pieces)
    rows = _csv(response)
    assert len(rows) == count
    # Newest first; each probability is the stored number, digit for digit.
    assert [float(row["Edema"]) for row in rows] == stored[::-1]
    assert len({row["id"] for row in rows}) == count


# Committed rows: closing a response runs close_old_connections, which closes a connection left
# inside a transaction (as a test's would be).
@pytest.mark.django_db(transaction=True)
def test_an_export_stopped_midway_has_no_trailer_and_ends_its_query(client, auditor, clinician):
    from audit.views import CSV_LINES_PER_CHUNK

    version = _version("v1")
    template = _prediction(clinician, version)
    fields = {
        f.attname: getattr(template, f.attname) for f in Prediction._meta.concrete_fields if not f.primary_key
    }
    Prediction.objects.bulk_create([Prediction(**fields) for _ in range(CSV_LINES_PER_CHUNK * 4)])
    client.force_login(auditor)

    response = client.get("/audit/", {"format": "csv"})
    pieces = iter(response.streaming_content)
    partial = next(pieces) + next(pieces)
    response.close()  # what the WSGI server does when the client goes away
    assert partial.count(b"\n") == 1 + CSV_LINES_PER_CHUNK and b"# end:" not in partial
    # The streaming query was ended: the same connection answers the next requests at once.
    assert client.get("/audit/").status_code == 200
    assert len(_csv(client.get("/audit/", {"format": "csv"}))) == CSV_LINES_PER_CHUNK * 4 + 1


def test_findings_in_another_order_or_of_odd_values_land_in_their_columns(client, auditor, clinician):
    # A version listing its findings in another order than the columns, and results whose values
    # need quoting or are not numbers (not what the engine writes, but the CSV must stay right).
    _version("v1")
    reordered = _version("v2", class_names=list(reversed(DEFAULT_CLASS_NAMES)))
    _prediction(clinician, reordered, {"Edema": 0.75})
    odd = _version("v3", class_names=["Edema", "Mass"])
    Prediction.objects.create(
        model=odd,
        user=clinician,
        image_url="x.png",
        image_sha256="f" * 64,
        results_json={
            "findings": [
                {"name": "Edema", "probability": 'a,"b"', "threshold": None, "positive": True},
                {"name": "Mass", "probability": 1, "threshold": 0.5, "positive": False},
            ]
        },
    )
    client.force_login(auditor)
    odd_row, reordered_row = _csv(client.get("/audit/", {"format": "csv"}))
    assert float(reordered_row["Edema"]) == 0.75 and reordered_row["Edema positive"] == "yes"
    assert float(reordered_row["Mass"]) == 0.1 and reordered_row["Mass positive"] == "no"
    assert (
        odd_row["Edema"] == 'a,"b"'
        and odd_row["Edema threshold"] == ""
        and odd_row["Edema positive"] == "yes"
    )
    assert odd_row["Mass"] == "1" and odd_row["Mass threshold"] == "0.5" and odd_row["Mass positive"] == "no"
    assert odd_row["Atelectasis"] == "" and odd_row["Atelectasis positive"] == ""


def test_it_keeps_spreadsheet_formulas_out_of_the_csv(client, auditor, django_user_model):
    evil = django_user_model.objects.create_user(username="=HYPERLINK(1)", password="x")
    _prediction(evil, _version(name="+cmd", class_names=["@SUM(A1)", "Mass"]))
    client.force_login(auditor)
    rows = _csv(client.get("/audit/", {"format": "csv"}))
    assert rows[0]["user"] == "'=HYPERLINK(1)" and rows[0]["model_version"] == "'+cmd"
    assert rows[0]["'@SUM(A1)"] == "0.1" and rows[0]["'@SUM(A1) threshold"] == "0.5"


def test_it_links_csv_export_and_pages_with_the_filters(client, auditor, clinician):
    version = _version()
    for _ in range(51):
        _prediction(clinician, version)
    client.force_login(auditor)
    html = client.get("/audit/", {"user": "alice"}).content.decode()

    assert 'href="?user=alice&amp;format=csv"' in html
    assert 'href="?user=alice&amp;before=' in html
    assert html.count('href="/predictions/') == 50
    older = html.split('href="?user=alice&amp;before=', 1)[1].split('"', 1)[0]
    second = client.get("/audit/", {"user": "alice", "before": older}).content.decode()
    assert second.count('href="/predictions/') == 1
    assert 'href="?user=alice&amp;after=' in second


def test_it_gives_auditors_worklist_and_audit_links_but_no_history(client, auditor):
    client.force_login(auditor)
    nav = client.get("/audit/").content.decode().split('aria-label="Main"')[1].split("</nav>")[0]
    assert 'href="/audit/"' in nav
    assert 'href="/worklist/"' in nav
    assert 'href="/history/"' not in nav
    assert 'href="/"' not in nav  # auditors cannot upload


def test_it_gives_clinicians_history_but_no_worklist_link(client, clinician):
    client.force_login(clinician)
    nav = client.get("/history/").content.decode().split('aria-label="Main"')[1].split("</nav>")[0]
    assert 'href="/history/"' in nav
    assert 'href="/worklist/"' not in nav
