"""What an evaluation stores and what follows from it: intervals that anyone can recompute from
the stored outputs, "not evaluable" findings, subgroups, calibration, the chance-level floor, the
evaluation kept as history, images the version was trained on, and the evaluation API."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from sklearn.metrics import roc_auc_score

from learning.calibration import calibration_apply, calibration_fit
from learning.evaluation_services import model_version_calibration_store, model_version_evaluation_record
from learning.labels import LabelTable, MappingReport
from registry.models import DEFAULT_CLASS_NAMES, Evaluation, ModelVersion

pytestmark = pytest.mark.django_db


class _Image:
    def __init__(self, name):
        self.name = name


def _version(name="trust-v1") -> ModelVersion:
    return ModelVersion.objects.create(
        version_name=name, storage_path="none.pt", class_names=DEFAULT_CLASS_NAMES, sha256="d" * 64
    )


def _table(n=160, seed=0, attributes=None) -> LabelTable:
    rng = np.random.default_rng(seed)
    labels = (rng.random((n, len(DEFAULT_CLASS_NAMES))) < 0.3).astype(float)
    labels[:, DEFAULT_CLASS_NAMES.index("Pneumonia")] = 0.0
    labels[:5, DEFAULT_CLASS_NAMES.index("Pneumonia")] = 1.0  # 5 positives: not evaluable
    return LabelTable(
        paths=[_Image(f"{i}.png") for i in range(n)],
        labels=labels,
        class_names=list(DEFAULT_CLASS_NAMES),
        patients=[f"p{i // 2}" for i in range(n)],  # two images per patient
        report=MappingReport(label_format="onehot", uncertain="ignore"),
        source="synthetic",
        attributes=attributes or {},
    )


def _scores(table, signal, seed=1):
    noise = np.random.default_rng(seed).normal(size=table.labels.shape)
    return 1 / (1 + np.exp(-(noise + signal * table.labels)))


def _patient_bootstrap(y, s, patients, rounds=1500, seed=42):
    rng = np.random.default_rng(seed)
    groups = np.asarray(patients)
    unique = np.unique(groups)
    members = {p: np.flatnonzero(groups == p) for p in unique}
    values = []
    for _ in range(rounds):
        index = np.concatenate([members[p] for p in rng.choice(unique, size=len(unique))])
        if len(set(y[index])) == 2:
            values.append(roc_auc_score(y[index], s[index]))
    return np.percentile(values, [2.5, 97.5])


def test_its_intervals_recompute_from_the_stored_outputs(api, model_admin):
    version = _version()
    table = _table()
    evaluation = model_version_evaluation_record(
        version=version, table=table, scores=_scores(table, 1.5), evaluation_set="synthetic 160"
    )
    body = api(model_admin).get(f"/api/v1/evaluations/{evaluation.pk}/").json()
    outputs = body["outputs"]
    labels = np.array(outputs["labels"], dtype=float)
    scores = np.array(outputs["scores"], dtype=float)
    patients = outputs["patients"]
    assert len(set(patients)) == 80 and "p0" not in patients  # grouped, not named
    assert body["details"]["settings"]["resampling"] == "patient" and body["in_force"] is True
    for k, name in enumerate(outputs["class_names"]):
        entry = body["per_class"][name]
        if name == "Pneumonia":
            assert entry["auroc"] is None and entry["evaluable"] is False and entry["positives"] == 5
            continue
        assert entry["auroc"] == pytest.approx(roc_auc_score(labels[:, k], scores[:, k]), abs=1e-4)
        low, high = _patient_bootstrap(labels[:, k], scores[:, k], patients)
        assert entry["ci"][0] == pytest.approx(low, abs=0.03) and entry["ci"][1] == pytest.approx(
            high, abs=0.03
        )
    evaluable = [e["auroc"] for e in body["per_class"].values() if e["evaluable"]]
    assert body["mean_auroc"] == pytest.approx(np.mean(evaluable), abs=1e-4)
    assert body["mean_auroc_ci"][0] < body["mean_auroc"] < body["mean_auroc_ci"][1]
    assert body["details"]["calibration"]["Edema"]["ece"] is not None
    assert version.honesty()["state"] == "evaluated"


def test_a_chance_level_or_unmeasurable_evaluation_does_not_validate(settings):
    version = _version()
    table = _table(seed=3)
    chance = model_version_evaluation_record(
        version=version, table=table, scores=_scores(table, 0.0), evaluation_set="s"
    )
    assert chance.mean_auroc_low <= 0.5 and version.honesty()["state"] == "not_validated"
    settings.LUNGSITE_EVAL_MIN_POSITIVES = 200  # no finding reaches it
    none = model_version_evaluation_record(
        version=version, table=table, scores=_scores(table, 3.0), evaluation_set="s2"
    )
    assert none.mean_auroc is None
    honesty = version.honesty()
    assert honesty["state"] == "not_validated" and "no finding" in honesty["statement"]
    assert honesty["evaluation_id"] == none.pk


def test_an_evaluation_speaks_from_when_it_was_made_and_only_when_held_out():
    version = _version()
    table = _table(seed=4)
    first = model_version_evaluation_record(
        version=version, table=table, scores=_scores(table, 0.0), evaluation_set="s"
    )
    before = first.created_at
    second = model_version_evaluation_record(
        version=version, table=table, scores=_scores(table, 2.0), evaluation_set="s"
    )
    assert version.honesty(at=before)["evaluation_id"] == first.pk
    assert version.honesty(at=before)["state"] == "not_validated"
    assert version.honesty()["evaluation_id"] == second.pk and version.honesty()["state"] == "evaluated"
    # A validation or in-sample evaluation is kept but never speaks for the version.
    model_version_evaluation_record(
        version=version,
        table=table,
        scores=_scores(table, 0.0),
        evaluation_set="v",
        kind=Evaluation.IN_SAMPLE,
    )
    assert version.evaluation_in_force().pk == second.pk


def test_it_flags_a_subgroup_gap_larger_than_its_intervals():
    n = 240
    sex = ["F" if i % 4 < 2 else "M" for i in range(n)]  # both images of a patient share it
    view = ["PA" if i % 8 < 4 else "AP" for i in range(n)]
    table = _table(n=n, seed=5, attributes={"sex": sex, "view": view})
    scores = _scores(table, 0.0, seed=6)
    women = np.array(sex) == "F"
    scores[women] = _scores(table, 4.0, seed=7)[women]  # separates findings for women only
    evaluation = model_version_evaluation_record(
        version=_version(), table=table, scores=scores, evaluation_set="s"
    )
    subgroups = evaluation.details["subgroups"]
    gap = subgroups["sex"]["gaps"][0]
    assert gap["groups"] == ["F", "M"] and gap["difference"] > 0.3 and gap["flagged"] is True
    assert subgroups["sex"]["groups"]["F"]["mean_auroc"] > subgroups["sex"]["groups"]["M"]["mean_auroc"]
    assert subgroups["sex"]["groups"]["F"]["ci"] is not None
    assert not any(g["flagged"] for g in subgroups["view"]["gaps"])  # view has nothing to do with it


def test_a_stored_calibration_moves_the_thresholds_and_keeps_the_decisions():
    version = _version()
    version.thresholds = {"Edema": 0.62}
    version.save()
    table = _table(n=400, seed=8)
    raw = 1 / (1 + np.exp(-(np.random.default_rng(9).normal(size=table.labels.shape) + 1.5 * table.labels)))
    calibration = calibration_fit(table.labels, raw, DEFAULT_CLASS_NAMES, min_positives=10)
    model_version_calibration_store(version=version, calibration=calibration, fitted_on="synthetic 400")
    version.refresh_from_db()
    served, flags = calibration_apply(version.calibration, DEFAULT_CLASS_NAMES, raw)
    k = DEFAULT_CLASS_NAMES.index("Edema")
    assert flags[k] and not flags[DEFAULT_CLASS_NAMES.index("Pneumonia")]  # 0 positives there
    assert ((raw[:, k] >= 0.62) == (served[:, k] >= version.threshold_for("Edema"))).all()
    assert abs(served[:, k].mean() - table.labels[:, k].mean()) < 0.03


def _seen(version, shared_data, count):
    from engine.decode import decode_gray
    from learning.labels import read_label_table
    from learning.scoring import pixel_sha256, training_images_record

    table = read_label_table(shared_data / "nih_labels.csv", shared_data, DEFAULT_CLASS_NAMES, limit=count)
    ids = [pixel_sha256(decode_gray(p.read_bytes(), p.name)) for p in table.paths]
    training_images_record(version=version, train=ids[:-1], validation=ids[-1:], base=None)


def _evaluate(*args) -> dict:
    out = io.StringIO()
    call_command("evaluate_model", *args, stdout=out)
    return json.loads(out.getvalue())


@pytest.mark.usefixtures("one_torch_thread")
def test_it_leaves_out_or_marks_images_the_version_was_trained_on(starter_model, shared_data):
    _seen(starter_model, shared_data, 6)
    common = ["--labels", str(shared_data / "nih_labels.csv"), "--images", str(shared_data)]
    with pytest.raises(CommandError, match="All 6 readable images were used to train or tune"):
        _evaluate(starter_model.version_name, *common, "--limit", "6")
    marked = _evaluate(starter_model.version_name, *common, "--limit", "6", "--include-seen")
    assert marked["kind"] == "in_sample" and marked["seen_images"] == 6
    assert "in sample" in " ".join(marked["notes"])
    assert starter_model.evaluation_in_force() is None  # in sample: never in force
    kept = _evaluate(starter_model.version_name, *common, "--limit", "8")
    assert kept["kind"] == "held_out" and kept["seen_images"] == 6 and kept["n_images"] == 2
