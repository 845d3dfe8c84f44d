import io
import json

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from sklearn.metrics import roc_auc_score

from learning.labels import LabelTable, MappingReport
from learning.models import TrainingRun
from learning.training import patient_split, sensitivity_thresholds, training_run_execute
from registry.models import Evaluation, ModelVersion

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def run(*args) -> dict:
    out = io.StringIO()
    call_command("train_model", *args, stdout=out, stderr=io.StringIO())
    return json.loads(out.getvalue())


def test_it_splits_by_patient_with_no_patient_on_both_sides():
    patients = [str(i // 3) for i in range(30)]  # 10 patients, 3 images each
    labels = np.tile(np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]]), (10, 1))
    table = LabelTable(
        paths=[None] * 30,
        labels=labels,
        class_names=["A", "B"],
        patients=patients,
        report=MappingReport("x", "ignore"),
    )
    train, val, test = patient_split(table, val_fraction=0.2, seed=0)
    assert sorted(train + val) == list(range(30)) and test == []
    assert not {patients[i] for i in train} & {patients[i] for i in val}
    assert len(val) == 6
    train, val, test = patient_split(table, val_fraction=0.2, test_fraction=0.2, seed=0)
    assert sorted(train + val + test) == list(range(30)) and len(val) == len(test) == 6
    sides = [{patients[i] for i in side} for side in (train, val, test)]
    assert not (sides[0] & sides[1] or sides[0] & sides[2] or sides[1] & sides[2])


def test_it_picks_thresholds_that_reach_the_target_sensitivity():
    labels = np.array([[1], [1], [1], [1], [0], [0]], dtype=float)
    scores = np.array([[0.9], [0.8], [0.4], [0.3], [0.5], [0.1]])
    assert sensitivity_thresholds(labels, scores, ["A"], target=0.75) == {"A": 0.4}
    assert sensitivity_thresholds(labels, scores, ["A"], target=1.0) == {"A": 0.3}


@pytest.mark.django_db
def test_it_trains_a_registered_version_and_registers_an_evaluated_inactive_one(
    starter_model, shared_data, tmp_path
):
    result = run(
        starter_model.version_name,
        "--version-name",
        "tiny-trained",
        "--labels",
        str(shared_data / "nih_labels.csv"),
        "--images",
        str(shared_data),
        "--limit",
        "20",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--input-size",
        "64",
        "--checkpoints",
        str(tmp_path / "ckpt"),
    )
    version = ModelVersion.objects.get(version_name="tiny-trained")
    assert result["version"]["id"] == version.pk
    assert not version.is_active and not version.untrained
    assert version.preprocessing["input_size"] == 64
    split = result["split"]
    assert split["patients_on_both_sides"] == 0
    assert split["train_images"] + split["val_images"] + split["test_images"] == 20
    assert split["val_images"] >= 1 and split["test_images"] >= 1
    assert (tmp_path / "ckpt" / "best.pt").stat().st_size > 1_000_000
    # The test split (4 images) cannot show anything: no finding has 10 positives and negatives.
    assert version.evaluated_at is not None
    assert result["honesty"]["state"] == "not_validated" and "no finding" in result["honesty"]["statement"]
    held_out = version.evaluation_in_force()
    assert held_out.kind == Evaluation.HELD_OUT and held_out.n_images == split["test_images"]
    assert result["test"]["evaluation_id"] == held_out.pk
    # The images that trained or tuned it are recorded, and an evaluation on the same table leaves them out.
    assert version.training_images.count() == split["train_images"] + split["val_images"]
    out = io.StringIO()
    call_command(
        "evaluate_model",
        "tiny-trained",
        "--labels",
        str(shared_data / "nih_labels.csv"),
        "--images",
        str(shared_data),
        "--limit",
        "20",
        stdout=out,
    )
    again = json.loads(out.getvalue())
    assert again["seen_images"] == split["train_images"] + split["val_images"]
    assert again["n_images"] == split["test_images"] and again["kind"] == "held_out"
    assert set(version.thresholds) <= set(version.class_names)
    assert all(0.0 <= t <= 1.0 for t in version.thresholds.values())
    card = version.model_card
    assert {
        "intended_use",
        "training_data",
        "split",
        "training",
        "evaluation_set",
        "auroc",
        "thresholds",
    } <= set(card)
    assert card["training"]["epochs_run"] == 1

    # The stored outputs give back the stored AUROC table, class by class.
    evaluation = Evaluation.objects.get(version=version, kind=Evaluation.VALIDATION)
    outputs = evaluation.outputs
    assert len(outputs["images"]) == result["split"]["val_images"]
    labels = np.array(outputs["labels"], dtype=float)
    scores = np.array(outputs["scores"], dtype=float)
    for k, name in enumerate(outputs["class_names"]):
        entry = evaluation.per_class[name]
        assert entry["positives"] + entry["negatives"] == len(labels)
        assert version.per_class_counts[name]["positives"] == held_out.per_class[name]["positives"]
        if entry["auroc"] is not None:
            assert abs(roc_auc_score(labels[:, k], scores[:, k]) - entry["auroc"]) < 1e-4


@pytest.mark.django_db
def test_it_refuses_bad_options(starter_model, shared_data):
    common = ["--labels", str(shared_data / "nih_labels.csv"), "--images", str(shared_data)]
    with pytest.raises(CommandError, match="--epochs must be at least 1"):
        run(starter_model.version_name, "--version-name", "x1", "--epochs", "0", *common)
    with pytest.raises(CommandError, match="already exists"):
        run(starter_model.version_name, "--version-name", starter_model.version_name, *common)
    with pytest.raises(CommandError, match="No labelled images"):
        run(starter_model.version_name, "--version-name", "x2")
    assert ModelVersion.objects.count() == 1


@pytest.mark.django_db
def test_the_task_body_trains_and_records_progress_on_the_run(starter_model, shared_data, model_admin):
    run_row = TrainingRun.objects.create(
        base_version=starter_model,
        created_by=model_admin,
        options={
            "version_name": "from-admin",
            "labels": str(shared_data / "nih_labels.csv"),
            "images": str(shared_data),
            "limit": 12,
            "epochs": 1,
            "batch_size": 6,
            "input_size": 64,
        },
    )
    done = training_run_execute(run_id=run_row.pk)
    assert done.status == TrainingRun.DONE, done.message
    assert done.result_version.version_name == "from-admin"
    assert done.result_version.created_by == model_admin
    assert done.progress["epoch"] == 1 and "val_mean_auroc" in done.progress
    assert training_run_execute(run_id=run_row.pk).result_version == done.result_version  # idempotent
    assert ModelVersion.objects.filter(version_name="from-admin").count() == 1
