"""The history page `/history/`: the user's own predictions, newest first, 25 a page."""

from django.urls import reverse

from audit.models import Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion


def _version() -> ModelVersion:
    return ModelVersion.objects.create(
        version_name="starter-untrained",
        storage_path="w.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="ab" * 32,
        is_active=True,
        untrained=True,
    )


def _prediction(user, version, probabilities=None) -> Prediction:
    probabilities = probabilities or {}
    findings = [
        {"name": name, "probability": p, "threshold": 0.5, "positive": p >= 0.5}
        for name, p in ((name, probabilities.get(name, 0.1)) for name in version.class_names)
    ]
    return Prediction.objects.create(
        model=version,
        user=user,
        image_url="x.png",
        image_sha256="0" * 64,
        results_json={"findings": findings, "untrained": version.untrained},
    )


def test_it_sends_anonymous_users_to_login(client, db):
    response = client.get("/history/")
    assert response.status_code == 302
    assert response["Location"] == f"{reverse('login')}?next=/history/"


def test_it_lists_only_the_users_own_predictions_newest_first(client, clinician, other_clinician, auditor):
    version = _version()
    first = _prediction(clinician, version)
    foreign = _prediction(other_clinician, version)
    second = _prediction(clinician, version)
    audited = _prediction(auditor, version)

    client.force_login(clinician)
    html = client.get("/history/").content.decode()
    ids = [int(part.split('/"', 1)[0]) for part in html.split('href="/predictions/')[1:]]
    assert ids == [second.pk, first.pk]
    assert f"/predictions/{foreign.pk}/" not in html

    # Auditors may see every prediction, but their history is their own.
    client.force_login(auditor)
    html = client.get("/history/").content.decode()
    assert f"/predictions/{audited.pk}/" in html and f"/predictions/{first.pk}/" not in html


def test_it_shows_the_top_three_findings(client, clinician):
    _prediction(clinician, _version(), {"Edema": 0.8, "Mass": 0.6, "Nodule": 0.3, "Fibrosis": 0.2})
    client.force_login(clinician)
    html = client.get("/history/").content.decode()

    chips = html.split('<ul class="chips">')[1].split("</ul>")[0]
    assert chips.index("Edema") < chips.index("Mass") < chips.index("Nodule")
    assert "Fibrosis" not in chips
    assert chips.count("chip chip-positive") == 2
    assert '<span class="mono" title="score 0-100, threshold 50">80</span>' in chips and "%" not in chips
    assert "UNTRAINED" in html


def test_it_pages_by_25_with_keyset_links(client, clinician):
    version = _version()
    made = [_prediction(clinician, version) for _ in range(27)]
    client.force_login(clinician)

    page1 = client.get("/history/").content.decode()
    older = page1.split('href="?before=', 1)[1].split('"', 1)[0]
    page2 = client.get("/history/", {"before": older}).content.decode()
    assert page1.count('href="/predictions/') == 25
    assert page2.count('href="/predictions/') == 2
    assert f"/predictions/{made[-1].pk}/" in page1 and f"/predictions/{made[0].pk}/" in page2
    assert 'href="?before=' not in page2  # the last page links to no older one
    newer = page2.split('href="?after=', 1)[1].split('"', 1)[0]
    assert client.get("/history/", {"after": newer}).content.decode().count('href="/predictions/') == 25
    # A malformed cursor (or the old ?page=) gives the first page rather than failing.
    assert client.get("/history/", {"before": "garbage!"}).content.decode().count('href="/predictions/') == 25
    assert client.get("/history/", {"page": 99}).status_code == 200


def test_it_says_when_there_is_nothing_yet(client, clinician):
    client.force_login(clinician)
    html = client.get("/history/").content.decode()
    assert "No predictions yet." in html
