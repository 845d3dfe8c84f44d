import io
import json

import numpy as np
import pytest
from django.core.management import call_command

from learning.evaluation_services import model_version_evaluation_record
from learning.labels import LabelTable, MappingReport
from registry.models import ActivationEvent, Evaluation
from registry.services import ActivationGateRefused, model_version_activate, model_version_register
from tests.registry.conftest import variant_weights_bytes

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]


@pytest.fixture(autouse=True)
def _gate_on(settings):
    settings.LUNGSITE_ACTIVATION_GATE = True


class _Image:
    def __init__(self, name):
        self.name = name


def _table(class_names) -> LabelTable:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 2, size=(20, len(class_names))).astype(float)
    return LabelTable(
        paths=[_Image(f"{i}.png") for i in range(20)],
        labels=labels,
        class_names=list(class_names),
        patients=[str(i) for i in range(20)],
        report=MappingReport(label_format="onehot", uncertain="ignore"),
        source="synthetic",
    )


def _evaluate(version, table, *, quality: float):
    """Scores that separate the labels as well as `quality` says (1: perfectly, 0: not at all)."""
    noise = np.random.default_rng(2).random(table.labels.shape)
    scores = quality * table.labels + (1 - quality) * noise
    return model_version_evaluation_record(
        version=version, table=table, scores=scores, evaluation_set="set A"
    )


def _register(seed: int, name: str):
    from registry.models import DEFAULT_CLASS_NAMES

    return model_version_register(
        data=variant_weights_bytes(seed), version_name=name, class_names=DEFAULT_CLASS_NAMES
    )


def test_it_refuses_a_never_evaluated_version_unless_a_reason_is_written(starter_model, model_admin):
    candidate = _register(1, "candidate-v1")
    assert candidate.honesty_warning().startswith("NOT EVALUATED")
    with pytest.raises(ActivationGateRefused, match="has no evaluation"):
        model_version_activate(version=candidate, user=model_admin, via="api")
    candidate.refresh_from_db()
    assert not candidate.is_active
    model_version_activate(
        version=candidate, user=model_admin, via="api", override_reason="Urgent: reader study starts today."
    )
    event = ActivationEvent.objects.get(version=candidate)
    assert event.override_reason == "Urgent: reader study starts today."
    assert event.activated_by == model_admin


def test_it_refuses_a_version_worse_than_the_active_one_on_the_same_set(starter_model, model_admin):
    good, worse = _register(2, "good-v1"), _register(3, "worse-v1")
    table = _table(good.class_names)
    _evaluate(good, table, quality=0.8)
    _evaluate(worse, table, quality=0.2)
    model_version_activate(version=good, user=model_admin, via="api")  # evaluated, nothing better active
    with pytest.raises(ActivationGateRefused, match="below the active good-v1"):
        model_version_activate(version=worse, user=model_admin, via="api")
    good_mean = Evaluation.objects.get(version=good).mean_auroc
    worse_mean = Evaluation.objects.get(version=worse).mean_auroc
    assert worse_mean < good_mean
    worse.refresh_from_db()
    assert worse.honesty_warning() is None
    assert worse.per_class_counts["Edema"]["positives"] + worse.per_class_counts["Edema"]["negatives"] == 20


def test_it_lets_a_better_version_through_and_the_command_takes_a_reason(starter_model, model_admin):
    good, better = _register(4, "good-v2"), _register(5, "better-v2")
    table = _table(good.class_names)
    _evaluate(good, table, quality=0.3)
    _evaluate(better, table, quality=0.9)
    model_version_activate(version=good, via="api")
    model_version_activate(version=better, via="api")
    assert ActivationEvent.objects.filter(version=better, override_reason="").exists()
    unevaluated = _register(6, "plain-v2")
    out = io.StringIO()
    with pytest.raises(Exception, match="has no evaluation"):
        call_command("activate_model", "plain-v2", stdout=out)
    call_command("activate_model", "plain-v2", "--override-reason", "Comparing on live traffic.", stdout=out)
    unevaluated.refresh_from_db()
    assert unevaluated.is_active


def test_the_api_answers_409_with_the_reason_and_accepts_an_override(starter_model, model_admin, api):
    candidate = _register(7, "api-candidate")
    client = api(model_admin)
    refused = client.post(f"/api/v1/models/{candidate.pk}/activate/", {}, format="json")
    assert refused.status_code == 409, refused.content
    assert "no evaluation" in refused.json()["error"]["message"]
    accepted = client.post(
        f"/api/v1/models/{candidate.pk}/activate/",
        {"override_reason": "Approved by the safety board."},
        format="json",
    )
    assert accepted.status_code == 200, accepted.content
    assert json.loads(accepted.content)["is_active"] is True
    assert ActivationEvent.objects.get(version=candidate).override_reason == "Approved by the safety board."


def test_the_admin_asks_for_a_reason_and_keeps_it(starter_model, model_admin, client):
    from learning.models import TrainingRun

    candidate = _register(8, "admin-candidate")
    client.force_login(model_admin)
    changelist = "/admin/registry/modelversion/"
    refused = client.post(
        changelist,
        {"action": "activate_selected", "_selected_action": [candidate.pk], "confirm": "yes"},
        follow=True,
    )
    assert b"has no evaluation" in refused.content
    candidate.refresh_from_db()
    assert not candidate.is_active
    form = client.post(changelist, {"action": "activate_with_reason", "_selected_action": [candidate.pk]})
    assert form.status_code == 200 and b"evaluation gate refuses" in form.content
    done = client.post(
        changelist,
        {
            "action": "activate_with_reason",
            "_selected_action": [candidate.pk],
            "reason": "Board approval 2026-12-01.",
        },
    )
    assert done.status_code == 302
    assert ActivationEvent.objects.get(version=candidate).override_reason == "Board approval 2026-12-01."

    queued = client.post(
        changelist,
        {
            "action": "train_from_version",
            "_selected_action": [candidate.pk],
            "version_name": "from-the-admin",
            "feedback": "on",
            "epochs": 2,
            "batch_size": 8,
            "lr": 0.0001,
            "max_minutes": 5,
        },
    )
    assert queued.status_code == 302
    run = TrainingRun.objects.get()
    assert (run.base_version, run.status, run.options["epochs"]) == (candidate, TrainingRun.QUEUED, 2)


def _big_table(class_names, n=200, seed=4) -> LabelTable:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(class_names))) < 0.3).astype(float)
    return LabelTable(
        paths=[_Image(f"big{i}.png") for i in range(n)],
        labels=labels,
        class_names=list(class_names),
        patients=[str(i // 2) for i in range(n)],
        report=MappingReport(label_format="onehot", uncertain="ignore"),
        source="synthetic",
    )


def _scores(table, signal: float, seed: int):
    """Scores whose AUROC grows with `signal` (0: chance)."""
    noise = np.random.default_rng(seed).normal(size=table.labels.shape)
    return 1 / (1 + np.exp(-(noise + signal * table.labels)))


def test_it_refuses_a_chance_level_version_whatever_is_active_and_shows_the_reason(model_admin, api, client):
    chance = _register(11, "chance-v1")
    table = _big_table(chance.class_names)
    evaluation = model_version_evaluation_record(
        version=chance, table=table, scores=_scores(table, 0.0, 1), evaluation_set="set B"
    )
    assert evaluation.mean_auroc_low <= 0.5 <= evaluation.mean_auroc_high
    chance.refresh_from_db()
    honesty = chance.honesty()
    assert honesty["state"] == "not_validated" and honesty["evaluation_id"] == evaluation.pk
    assert honesty["statement"].startswith("NOT VALIDATED") and "includes 0.5" in honesty["statement"]
    # Nothing is active: there is nothing to compare with, and it is still refused.
    with pytest.raises(ActivationGateRefused, match="NOT VALIDATED"):
        model_version_activate(version=chance, user=model_admin, via="api")
    refused = api(model_admin).post(f"/api/v1/models/{chance.pk}/activate/", {}, format="json")
    assert refused.status_code == 409 and "NOT VALIDATED" in refused.json()["error"]["message"]
    accepted = api(model_admin).post(
        f"/api/v1/models/{chance.pk}/activate/",
        {"override_reason": "Reader study of failure modes."},
        format="json",
    )
    assert accepted.status_code == 200, accepted.content
    body = accepted.json()
    assert body["honesty"]["state"] == "not_validated" and body["warning"].startswith("NOT VALIDATED")
    assert body["evaluation"]["id"] == evaluation.pk and body["evaluation"]["mean_auroc_ci"][0] <= 0.5
    assert body["activations"][0]["override_reason"] == "Reader study of failure modes."
    assert body["activations"][0]["activated_by"] == model_admin.username
    listed = api(model_admin).get("/api/v1/models/").json()["results"][0]
    assert listed["activations"][0]["override_reason"] == "Reader study of failure modes."
    client.force_login(model_admin)
    history = client.get("/admin/registry/activationevent/")
    assert history.status_code == 200 and b"Reader study of failure modes." in history.content


def test_it_refuses_a_version_below_the_floor(settings, model_admin):
    settings.LUNGSITE_AUROC_FLOOR = 0.9
    modest = _register(12, "modest-v1")
    table = _big_table(modest.class_names)
    evaluation = model_version_evaluation_record(
        version=modest, table=table, scores=_scores(table, 1.0, 2), evaluation_set="set C"
    )
    assert evaluation.mean_auroc_low > 0.5 and evaluation.mean_auroc < 0.9
    with pytest.raises(ActivationGateRefused, match="below the floor of 0.90"):
        model_version_activate(version=modest, user=model_admin, via="api")
    settings.LUNGSITE_AUROC_FLOOR = 0.6
    model_version_activate(version=modest, user=model_admin, via="api")


def test_it_compares_intervals_not_means_on_the_same_set(model_admin):
    first, close, far = _register(13, "first-v1"), _register(14, "close-v1"), _register(15, "far-v1")
    table = _big_table(first.class_names)
    strong = model_version_evaluation_record(
        version=first, table=table, scores=_scores(table, 2.0, 3), evaluation_set="set D"
    )
    # A slightly lower mean within the intervals: not told apart, let through.
    near = model_version_evaluation_record(
        version=close, table=table, scores=_scores(table, 1.9, 4), evaluation_set="set D"
    )
    weak = model_version_evaluation_record(
        version=far, table=table, scores=_scores(table, 0.8, 5), evaluation_set="set D"
    )
    assert near.mean_auroc < strong.mean_auroc and near.mean_auroc_high >= strong.mean_auroc_low
    assert weak.mean_auroc_high < strong.mean_auroc_low
    model_version_activate(version=first, user=model_admin, via="api")
    with pytest.raises(ActivationGateRefused, match="the intervals do not overlap"):
        model_version_activate(version=far, user=model_admin, via="api")
    model_version_activate(version=close, user=model_admin, via="api")
    assert ActivationEvent.objects.filter(version=close, override_reason="").exists()
