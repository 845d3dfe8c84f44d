import io
import json
import math

import numpy as np
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError

from learning.evaluation import EvaluationError, mean_auroc, per_class_auroc, read_labels, youden_thresholds


def run(*args) -> dict:
    out = io.StringIO()
    call_command("evaluate_model", *args, stdout=out)
    return json.loads(out.getvalue())


def test_it_computes_auroc_with_counts_and_skips_undefined_classes():
    labels = np.array([[1, 0, 1], [0, 0, 1], [1, 0, 1], [0, 0, 1]], dtype=float)
    scores = np.array([[0.9, 0.1, 0.2], [0.2, 0.2, 0.3], [0.8, 0.3, 0.4], [0.1, 0.4, 0.5]])
    result = per_class_auroc(labels, scores, ["A", "B", "C"])
    assert result["A"] == {"auroc": 1.0, "positives": 2, "negatives": 2}
    assert result["B"] == {"auroc": None, "positives": 0, "negatives": 4}
    assert result["C"] == {"auroc": None, "positives": 4, "negatives": 0}
    assert mean_auroc(result) == 1.0


def test_it_ignores_unlabelled_rows_per_class():
    labels = np.array([[1, np.nan], [0, 1], [np.nan, 0]], dtype=float)
    scores = np.array([[0.2, 0.9], [0.8, 0.8], [0.5, 0.1]])
    result = per_class_auroc(labels, scores, ["A", "B"])
    assert result["A"] == {"auroc": 0.0, "positives": 1, "negatives": 1}
    assert result["B"]["auroc"] == 1.0
    assert mean_auroc(result) == 0.5


def test_it_picks_the_youden_threshold():
    labels = np.array([[0], [0], [0], [1], [1], [1]], dtype=float)
    scores = np.array([[0.1], [0.2], [0.6], [0.5], [0.7], [0.9]])
    # >= 0.7: sensitivity 2/3, specificity 1 -> J 0.667; >= 0.5: 1 and 2/3 -> J 0.667; first best wins.
    threshold = youden_thresholds(labels, scores, ["A"])["A"]
    assert threshold in (0.5, 0.7)
    assert youden_thresholds(np.zeros((3, 1)), scores[:3], ["A"]) == {}


def test_it_reads_the_nih_label_table(shared_data):
    labelled = read_labels(shared_data / "nih_labels.csv", shared_data, ["Edema", "Hernia", "Nope"], limit=10)
    assert len(labelled.paths) == 10
    assert all(p.exists() for p in labelled.paths)
    assert labelled.labelled == [True, True, False]
    assert np.isnan(labelled.labels[:, 2]).all()
    assert set(np.unique(labelled.labels[:, :2])) <= {0.0, 1.0}


def test_it_refuses_a_table_without_image_column(tmp_path):
    table = tmp_path / "labels.csv"
    table.write_text("image,Edema\na.png,1\n")
    with pytest.raises(EvaluationError, match="no 'path' or 'file' column"):
        read_labels(table, tmp_path, ["Edema"])


@pytest.mark.django_db
def test_it_scores_the_untrained_starter_near_chance_on_real_images(starter_model, shared_data):
    result = run(
        starter_model.version_name,
        "--labels",
        str(shared_data / "nih_labels.csv"),
        "--images",
        str(shared_data),
        "--limit",
        "60",
        "--set-thresholds",
    )
    assert result["n_images"] == 60
    assert result["skipped"] == []
    assert 0.3 < result["mean_auroc"] < 0.7
    assert set(result["per_class"]) == set(starter_model.class_names)
    for entry in result["per_class"].values():
        assert entry["positives"] + entry["negatives"] == 60
    assert sum(entry["positives"] for entry in result["per_class"].values()) > 0

    starter_model.refresh_from_db()
    assert math.isclose(starter_model.accuracy_auroc, result["mean_auroc"])
    assert starter_model.per_class_auroc == {n: e["auroc"] for n, e in result["per_class"].items()}
    assert set(starter_model.thresholds) == set(result["thresholds_set"])
    assert all(0.0 <= t <= 1.0 for t in starter_model.thresholds.values())


@pytest.mark.django_db
def test_it_refuses_an_unknown_version(tmp_path):
    with pytest.raises(CommandError, match="No model version"):
        run("ghost", "--labels", str(tmp_path / "x.csv"), "--images", str(tmp_path))


@pytest.mark.django_db
def test_it_reports_unreadable_images_and_fails_when_none_is_read(starter_model, tmp_path):
    (tmp_path / "a.png").write_bytes(b"not an image")
    table = tmp_path / "labels.csv"
    table.write_text("path,Edema\na.png,1\nmissing.png,0\n")
    with pytest.raises(CommandError, match="None of the 2 images could be read"):
        run(str(starter_model.pk), "--labels", str(table), "--images", str(tmp_path))


@pytest.mark.django_db
def test_it_evaluates_on_nihs_own_table_and_shows_it_in_the_admin(starter_model, shared_data, superuser):
    from django.test import Client

    from registry.models import Evaluation

    folder = shared_data / "nih_reproduce_chexnet"
    result = run(
        starter_model.version_name,
        "--labels",
        str(folder / "all621_labels.csv"),
        "--images",
        str(folder / "images"),
        "--limit",
        "16",
    )
    assert result["n_images"] == 16
    assert result["labels"]["label_format"] == "nih"
    assert result["labels"]["unmapped"] == {"Hernia": 1} or "Hernia" in result["labels"]["unmapped"]
    evaluation = Evaluation.objects.get(version=starter_model)
    assert evaluation.n_images == 16 and len(evaluation.outputs["scores"]) == 16
    starter_model.refresh_from_db()
    assert starter_model.evaluated_at is not None
    assert "all621_labels.csv" in starter_model.evaluation_set
    assert starter_model.honesty_warning().startswith("UNTRAINED")  # evaluated, still untrained

    client = Client()
    client.force_login(superuser)
    page = client.get(f"/admin/registry/modelversion/{starter_model.pk}/change/")
    assert page.status_code == 200
    assert b"positives" in page.content and b"roc.png" in page.content
    png = client.get(f"/admin/registry/modelversion/evaluations/{evaluation.pk}/roc.png")
    assert png.status_code == 200 and png["Content-Type"] == "image/png"
    assert png.content[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.django_db
def test_it_evaluates_on_a_chexpert_table(starter_model, shared_data, tmp_path):
    images = shared_data / "nih_reproduce_chexnet" / "images"
    names = sorted(p.name for p in images.iterdir())[:6]
    table = tmp_path / "valid.csv"
    lines = ["Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Pleural Effusion,Edema,Fracture"]
    values = [("1.0", "0.0"), ("0.0", "-1.0"), ("", "1.0"), ("1.0", "0.0"), ("0.0", "1.0"), ("-1.0", "0.0")]
    for name, (effusion, edema) in zip(names, values, strict=True):
        lines.append(f"{name},F,50,Frontal,PA,,{effusion},{edema},0.0")
    table.write_text("\n".join(lines) + "\n")
    result = run(starter_model.version_name, "--labels", str(table), "--images", str(images))
    assert result["labels"]["label_format"] == "chexpert"
    assert result["labels"]["mapped"]["Pleural Effusion"] == "Effusion"
    assert "Fracture" in result["labels"]["unmapped"]
    # Uncertain (-1) ignored by default: 5 of 6 images count for each of the two classes.
    assert result["per_class"]["Effusion"]["positives"] + result["per_class"]["Effusion"]["negatives"] == 5
    assert result["per_class"]["Edema"] == {**result["per_class"]["Edema"], "positives": 2, "negatives": 3}
    mass = result["per_class"]["Mass"]
    assert (mass["auroc"], mass["positives"], mass["negatives"], mass["evaluable"]) == (None, 0, 0, False)
