import math

import numpy as np
import pytest

from learning.labels import LabelError, normalise, read_label_table
from registry.models import DEFAULT_CLASS_NAMES

NIH_HEADER = "Image Index,Finding Labels,Follow-up #,Patient ID,Patient Age,Patient Gender,View Position\n"


def _images(folder, *names):
    for name in names:
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")


def test_it_maps_names_across_spellings():
    assert normalise("Pleural Effusion") == normalise("Effusion")
    assert (
        normalise("Pleural_Thickening") == normalise("pleural thickening") == normalise("Pleural-Thickening")
    )


def test_it_reads_nihs_data_entry_table_and_reports_what_did_not_map(tmp_path):
    _images(tmp_path, "00000001_000.png", "00000001_001.png", "00000002_000.png")
    table = tmp_path / "Data_Entry_2017.csv"
    table.write_text(
        NIH_HEADER + "00000001_000.png,Cardiomegaly|Effusion,0,1,58,M,PA\n"
        "00000001_001.png,No Finding,1,1,58,M,PA\n"
        "00000002_000.png,Hernia|Pleural_Thickening,0,2,81,M,PA\n"
        "00000003_000.png,Mass,0,3,81,F,PA\n"
    )
    result = read_label_table(table, tmp_path, DEFAULT_CLASS_NAMES)
    k = {name: i for i, name in enumerate(DEFAULT_CLASS_NAMES)}
    assert result.report.label_format == "nih"
    assert len(result.paths) == 3  # 00000003_000.png is not in the folder
    assert result.report.as_dict()["missing_images"] == 1
    assert result.labels[0, k["Cardiomegaly"]] == 1 and result.labels[0, k["Effusion"]] == 1
    assert result.labels[0, k["Mass"]] == 0
    assert np.nansum(result.labels[1]) == 0 and not np.isnan(result.labels[1]).any()
    assert result.labels[2, k["Pleural_Thickening"]] == 1
    assert result.report.unmapped == {"Hernia": 1}
    assert result.patients == ["1", "1", "2"]


def test_it_reads_chexpert_with_each_uncertain_policy(tmp_path):
    _images(tmp_path, "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg")
    _images(tmp_path, "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg")
    table = tmp_path / "train.csv"
    table.write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Lung Opacity,Pleural Effusion,Edema,Cardiomegaly\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,F,68,Frontal,AP,,1.0,-1.0,1.0,\n"
        "CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,M,50,Frontal,PA,1.0,,0.0,-1.0,0.0\n"
    )
    k = {name: i for i, name in enumerate(DEFAULT_CLASS_NAMES)}
    ignored = read_label_table(table, tmp_path, DEFAULT_CLASS_NAMES)
    assert ignored.report.label_format == "chexpert"
    assert ignored.report.mapped["Pleural Effusion"] == "Effusion"
    assert ignored.report.unmapped == {"Lung Opacity": 1}
    assert math.isnan(ignored.labels[0, k["Effusion"]])
    assert ignored.labels[0, k["Edema"]] == 1 and ignored.labels[0, k["Cardiomegaly"]] == 0  # blank: negative
    assert math.isnan(ignored.labels[0, k["Mass"]])  # no such column: unlabelled
    assert ignored.report.uncertain_marks == 2
    assert ignored.patients == ["patient00001", "patient00002"]
    ones = read_label_table(table, tmp_path, DEFAULT_CLASS_NAMES, uncertain="positive")
    zeros = read_label_table(table, tmp_path, DEFAULT_CLASS_NAMES, uncertain="negative")
    assert ones.labels[0, k["Effusion"]] == 1 and ones.labels[1, k["Edema"]] == 1
    assert zeros.labels[0, k["Effusion"]] == 0 and zeros.labels[1, k["Edema"]] == 0


def test_it_reads_the_shared_one_hot_table(shared_data):
    result = read_label_table(shared_data / "nih_labels.csv", shared_data, DEFAULT_CLASS_NAMES)
    assert result.report.label_format == "onehot"
    assert len(result.paths) == 253
    assert result.report.unmapped == {"Hernia": 20}
    k = DEFAULT_CLASS_NAMES.index("Effusion")
    assert int(np.nansum(result.labels[:, k])) == 29
    assert not any(result.report.classes_unlabelled)


def test_it_reads_the_real_nih_format_table_of_the_reproduction(shared_data):
    folder = shared_data / "nih_reproduce_chexnet"
    result = read_label_table(folder / "all621_labels.csv", folder / "images", DEFAULT_CLASS_NAMES)
    assert result.report.label_format == "nih"
    assert len(result.paths) == 250
    assert result.report.as_dict()["missing_images"] == 371
    k = DEFAULT_CLASS_NAMES.index("Atelectasis")
    assert int(result.labels[:, k].sum()) == 32


def test_it_refuses_bad_values_and_tables_that_map_nothing(tmp_path):
    _images(tmp_path, "a.png")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,Edema\na.png,2\n")
    with pytest.raises(LabelError, match="Line 2: 'Edema' is '2'"):
        read_label_table(bad, tmp_path, DEFAULT_CLASS_NAMES)
    nothing = tmp_path / "nothing.csv"
    nothing.write_text("path,Fracture\na.png,1\n")
    with pytest.raises(LabelError, match="maps to any of the model's classes.*Fracture"):
        read_label_table(nothing, tmp_path, DEFAULT_CLASS_NAMES)
    with pytest.raises(LabelError, match="uncertain policy"):
        read_label_table(bad, tmp_path, DEFAULT_CLASS_NAMES, uncertain="maybe")
