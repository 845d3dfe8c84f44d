"""Label tables in the formats users already have, mapped onto a model's classes.

Formats (`read_label_table(..., label_format="auto")` tells them apart by their columns):
- ``nih``: NIH ChestX-ray14's ``Data_Entry_2017`` CSV: ``Image Index`` (a file name), ``Finding
  Labels`` (names separated by ``|``, or ``No Finding``), ``Patient ID``. A model class that is one
  of NIH's 14 labels is 1 when listed and 0 otherwise; any other class stays unlabelled.
- ``chexpert``: CheXpert's CSV: ``Path`` and one column per observation holding 1 (positive), 0
  (negative), -1 (uncertain) or blank (not mentioned in the report). Blank counts as negative (the
  report did not mention it). Uncertain follows `uncertain`: ``ignore`` (default: unlabelled for
  that class, left out of its loss and AUROC), ``positive`` (U-Ones) or ``negative`` (U-Zeros).
- ``onehot``: one row per image, the image in ``path`` (relative to the images folder) or ``file``,
  one 0/1 column per class (blank: unlabelled), like ``../shared/data/nih_labels.csv``.

Names match case-, space-, hyphen- and underscore-insensitively (``Pleural_Thickening`` is
``Pleural Thickening``), with synonyms (``Effusion`` is ``Pleural Effusion``). The returned
report says which columns or names mapped to which class, which did not map, and which of the
model's classes got no labels. No Django here except `feedback_label_table`.
"""

from __future__ import annotations

import csv
import hashlib
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from common.finding_names import normalise

FORMATS = ("auto", "nih", "chexpert", "onehot")
UNCERTAIN_POLICIES = ("ignore", "positive", "negative")

# NIH ChestX-ray14's vocabulary: a model class in it is labelled by an NIH table, 0 when not listed.
NIH_LABELS = (
    "Atelectasis",
    "Cardiomegaly",
    "Effusion",
    "Infiltration",
    "Mass",
    "Nodule",
    "Pneumonia",
    "Pneumothorax",
    "Consolidation",
    "Edema",
    "Emphysema",
    "Fibrosis",
    "Pleural_Thickening",
    "Hernia",
)
NO_FINDING = "nofinding"

# Columns that describe the image or patient rather than a finding: never reported as unmapped.
_METADATA = {
    "file",
    "path",
    "imageindex",
    "findinglabels",
    "patientid",
    "patientage",
    "patientgender",
    "viewposition",
    "followup#",
    "followup",
    "originalimagewidth",
    "originalimageheight",
    "originalimagepixelspacingx",
    "originalimagepixelspacingy",
    "originalimage[width",
    "height]",
    "originalimagepixelspacing[x",
    "y]",
    "sex",
    "age",
    "frontal/lateral",
    "ap/pa",
    "source",
    "note",
    "included",
    "nofinding",
}

_NIH_PATIENT = re.compile(r"^(\d+)_\d+\.\w+$")
_CHEXPERT_PATIENT = re.compile(r"(patient\d+)")


class LabelError(Exception):
    """A label table that cannot be read; the message says what was wrong."""


@dataclass
class MappingReport:
    """What a label table gave: `mapped` source name -> model class, `unmapped` source names (with
    how many positives each had) that are no class of the model, `classes_unlabelled` model classes
    without labels, `missing_images` rows whose image was not found (left out)."""

    label_format: str
    uncertain: str
    mapped: dict[str, str] = field(default_factory=dict)
    unmapped: dict[str, int] = field(default_factory=dict)
    classes_unlabelled: list[str] = field(default_factory=list)
    rows: int = 0
    missing_images: list[str] = field(default_factory=list)
    uncertain_marks: int = 0
    patient_source: str = ""
    marks_after_model_output: int = 0
    marks_blinded: int = 0

    def as_dict(self) -> dict:
        return {
            "label_format": self.label_format,
            "uncertain": self.uncertain,
            "mapped": self.mapped,
            "unmapped": self.unmapped,
            "classes_unlabelled": self.classes_unlabelled,
            "rows": self.rows,
            "images_found": self.rows - len(self.missing_images),
            "missing_images": len(self.missing_images),
            "missing_examples": self.missing_images[:5],
            "uncertain_marks": self.uncertain_marks,
            "patient_source": self.patient_source,
            **(
                {
                    "marks_after_model_output": self.marks_after_model_output,
                    "marks_blinded": self.marks_blinded,
                }
                if self.label_format == "feedback"
                else {}
            ),
        }


@dataclass
class LabelTable:
    """Images with labels: `labels` (N, K) float (1 positive, 0 negative, NaN unlabelled), columns
    ordered as `class_names`; `patients` (N,) group ids for a patient-level split; `paths` are file
    paths or StoredImage objects (both have `.name` and `.read_bytes()`)."""

    paths: list
    labels: np.ndarray
    class_names: list[str]
    patients: list[str]
    report: MappingReport
    source: str = ""
    # Per image, what the table says of the patient and view, for subgroup figures (None: not
    # given): {"sex": "F" | "M", "age": "0-17" | "18-39" | "40-59" | "60+", "view": "PA" | "AP" |
    # "LATERAL"}. Only the attributes the table has a column for are present.
    attributes: dict[str, list] = field(default_factory=dict)
    # Per image, for feedback labels: True when the mark was given after seeing the model's output.
    after_model_output: list[bool] | None = None

    @property
    def labelled(self) -> list[bool]:
        return [not np.isnan(self.labels[:, k]).all() for k in range(len(self.class_names))]

    def subset(self, indexes: Sequence[int]) -> LabelTable:
        indexes = list(indexes)
        return LabelTable(
            paths=[self.paths[i] for i in indexes],
            labels=self.labels[indexes],
            class_names=self.class_names,
            patients=[self.patients[i] for i in indexes],
            report=self.report,
            source=self.source,
            attributes={key: [values[i] for i in indexes] for key, values in self.attributes.items()},
            after_model_output=None
            if self.after_model_output is None
            else [self.after_model_output[i] for i in indexes],
        )

    def set_sha256(self) -> str:
        """Identifies the set: the sorted image names with their labels. Two evaluations compare
        only when this matches."""
        digest = hashlib.sha256()
        for name, row in sorted(zip((p.name for p in self.paths), self.labels.tolist(), strict=True)):
            digest.update(name.encode())
            digest.update(repr([None if math.isnan(v) else v for v in row]).encode())
        digest.update("|".join(self.class_names).encode())
        return digest.hexdigest()

    @classmethod
    def concatenate(cls, tables: Sequence[LabelTable]) -> LabelTable:
        first = tables[0]
        keys = sorted({key for t in tables for key in t.attributes})
        flagged = any(t.after_model_output is not None for t in tables)
        return cls(
            paths=[p for t in tables for p in t.paths],
            labels=np.concatenate([t.labels for t in tables]),
            class_names=first.class_names,
            patients=[p for t in tables for p in t.patients],
            report=first.report,
            source=" + ".join(t.source for t in tables),
            attributes={
                key: [v for t in tables for v in t.attributes.get(key, [None] * len(t.paths))] for key in keys
            },
            after_model_output=[v for t in tables for v in (t.after_model_output or [False] * len(t.paths))]
            if flagged
            else None,
        )


def class_index(class_names: Sequence[str]) -> dict[str, int]:
    return {normalise(name): k for k, name in enumerate(class_names)}


def detect_format(columns: Sequence[str]) -> str:
    names = {normalise(c) for c in columns}
    if "Path" in columns and "file" not in columns and "path" not in columns:
        return "chexpert"
    if "imageindex" in names and "findinglabels" in names:
        return "nih"
    if "path" in columns or "file" in columns:
        return "onehot"
    raise LabelError(
        "Cannot tell the label table's format: expected NIH's 'Image Index' + 'Finding Labels', "
        "CheXpert's 'Path', or a one-hot table with 'path' or 'file'."
    )


def read_label_table(
    csv_path: Path | str,
    images_dir: Path | str,
    class_names: Sequence[str],
    *,
    label_format: str = "auto",
    uncertain: str = "ignore",
    limit: int | None = None,
) -> LabelTable:
    """Reads a label table and maps it to `class_names`. Rows whose image is not in `images_dir`
    are left out and counted in the report (the NIH table lists 112,120 images; a folder may hold a
    part). Raises LabelError when the table cannot be read or no class maps."""
    if label_format not in FORMATS:
        raise LabelError(f"Unknown label format {label_format!r}; one of {', '.join(FORMATS)}.")
    if uncertain not in UNCERTAIN_POLICIES:
        raise LabelError(f"Unknown uncertain policy {uncertain!r}; one of {', '.join(UNCERTAIN_POLICIES)}.")
    csv_path, images_dir = Path(csv_path), Path(images_dir)
    try:
        with csv_path.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            columns = list(reader.fieldnames or [])
            rows = list(reader)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise LabelError(f"Cannot read the label table {csv_path}: {exc}.") from exc
    if not rows:
        raise LabelError(f"The label table {csv_path.name} has no rows.")
    if label_format == "auto":
        label_format = detect_format(columns)
    report = MappingReport(label_format=label_format, uncertain=uncertain)
    reader_for = {"nih": _nih_rows, "chexpert": _chexpert_rows, "onehot": _onehot_rows}[label_format]
    names, patients, labels = reader_for(rows, columns, list(class_names), report, uncertain)

    report.classes_unlabelled = [
        name for k, name in enumerate(class_names) if labels.size == 0 or np.isnan(labels[:, k]).all()
    ]
    if len(report.classes_unlabelled) == len(class_names):
        raise LabelError(
            f"No column or label of {csv_path.name} maps to any of the model's classes "
            f"({', '.join(class_names[:5])}, ...); not mapped: {', '.join(sorted(report.unmapped)[:10])}."
        )
    report.rows = len(names)
    found = _ImageFinder(images_dir)
    keep, paths = [], []
    for i, name in enumerate(names):
        path = found(name)
        if path is None:
            report.missing_images.append(name)
            continue
        keep.append(i)
        paths.append(path)
        if limit is not None and len(keep) >= limit:
            break
    if not keep:
        raise LabelError(
            f"None of the {len(names)} images of {csv_path.name} is in {images_dir} "
            f"(first: {names[0] if names else '-'})."
        )
    attributes = row_attributes(rows, columns)
    return LabelTable(
        paths=paths,
        labels=labels[keep],
        class_names=list(class_names),
        patients=[patients[i] for i in keep],
        report=report,
        source=f"{csv_path.name} ({label_format})",
        attributes={key: [values[i] for i in keep] for key, values in attributes.items()},
    )


# Columns that carry sex, age and view, as NIH, CheXpert and one-hot tables name them (normalised).
_SEX_COLUMNS = ("patientgender", "sex", "gender", "patientsex")
_AGE_COLUMNS = ("patientage", "age")
_VIEW_COLUMNS = ("viewposition", "view", "ap/pa", "frontal/lateral")


def age_band(text: str | None) -> str | None:
    """An age in years (NIH's "061Y" and plain numbers alike) as its band, or None."""
    match = re.match(r"\s*(\d+(?:\.\d+)?)", str(text or ""))
    if not match:
        return None
    age = float(match.group(1))
    if age < 18:
        return "0-17"
    return "18-39" if age < 40 else "40-59" if age < 60 else "60+"


def _sex(text: str | None) -> str | None:
    value = str(text or "").strip().upper()[:1]
    return value if value in ("F", "M") else None


def _view(row: dict, by_key: dict[str, str]) -> str | None:
    if (
        "frontal/lateral" in by_key
        and (row.get(by_key["frontal/lateral"]) or "").strip().lower() == "lateral"
    ):
        return "LATERAL"
    for key in ("viewposition", "view", "ap/pa"):
        if key in by_key:
            value = (row.get(by_key[key]) or "").strip().upper()
            if value in ("PA", "AP", "LATERAL", "LL", "RL"):
                return "LATERAL" if value in ("LL", "RL") else value
    return None


def row_attributes(rows: list[dict], columns: Sequence[str]) -> dict[str, list]:
    """Per row, sex, age band and view where the table has such columns (see LabelTable)."""
    by_key = {normalise(c): c for c in columns}
    sex = next((by_key[k] for k in _SEX_COLUMNS if k in by_key), None)
    age = next((by_key[k] for k in _AGE_COLUMNS if k in by_key), None)
    result: dict[str, list] = {}
    if sex:
        result["sex"] = [_sex(row.get(sex)) for row in rows]
    if age:
        result["age"] = [age_band(row.get(age)) for row in rows]
    if any(k in by_key for k in _VIEW_COLUMNS):
        result["view"] = [_view(row, by_key) for row in rows]
    return result


class _ImageFinder:
    """`images_dir / name`, or else the file of that name anywhere below `images_dir` (the NIH
    release spreads its images over images_001/images ... images_012/images)."""

    def __init__(self, images_dir: Path) -> None:
        self.images_dir = images_dir
        self._by_name: dict[str, Path] | None = None

    def __call__(self, name: str) -> Path | None:
        path = self.images_dir / name
        if path.is_file():
            return path
        if self._by_name is None:
            self._by_name = {p.name: p for p in self.images_dir.rglob("*") if p.is_file()}
        return self._by_name.get(Path(name).name)


def _patient_from_name(name: str) -> str | None:
    match = _NIH_PATIENT.match(Path(name).name)
    return match.group(1).lstrip("0") or "0" if match else None


def _nih_rows(rows, columns, class_names, report, uncertain):
    index = class_index(class_names)
    nih = {normalise(label) for label in NIH_LABELS}
    labels = np.full((len(rows), len(class_names)), np.nan)
    for k, name in enumerate(class_names):
        if normalise(name) in nih:
            labels[:, k] = 0.0
    unmapped: Counter[str] = Counter()
    names, patients = [], []
    for i, row in enumerate(rows):
        name = (row.get("Image Index") or "").strip()
        if not name:
            raise LabelError(f"Line {i + 2}: 'Image Index' is empty.")
        names.append(name)
        patient = (row.get("Patient ID") or "").strip()
        patients.append(patient.lstrip("0") or "0" if patient else _patient_from_name(name) or name)
        for label in (row.get("Finding Labels") or "").split("|"):
            label = label.strip()
            key = normalise(label)
            if not key or key == NO_FINDING:
                continue
            k = index.get(key)
            if k is None:
                unmapped[label] += 1
            else:
                labels[i, k] = 1.0
                report.mapped[label] = class_names[k]
    report.unmapped = dict(unmapped)
    report.patient_source = "Patient ID" if "Patient ID" in columns else "file name prefix"
    return names, patients, labels


def _value(text: str | None, *, line: int, column: str, allowed: tuple[float, ...]) -> float:
    text = (text or "").strip()
    if text == "":
        return math.nan
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if value not in allowed:
        shown = ", ".join(str(int(a)) for a in allowed)
        raise LabelError(f"Line {line}: {column!r} is {text!r}; expected {shown} or blank.")
    return value


def _label_columns(columns, class_names, report):
    """(column, class index) for every column that names a class; the other finding-like columns go
    to report.unmapped."""
    index = class_index(class_names)
    pairs = []
    for column in columns:
        key = normalise(column)
        if key in _METADATA or key.startswith("prob"):
            continue
        k = index.get(key)
        if k is None:
            report.unmapped[column] = 0
        else:
            pairs.append((column, k))
            report.mapped[column] = class_names[k]
    return pairs


def _chexpert_rows(rows, columns, class_names, report, uncertain):
    pairs = _label_columns(columns, class_names, report)
    labels = np.full((len(rows), len(class_names)), np.nan)
    names, patients = [], []
    for i, row in enumerate(rows):
        name = (row.get("Path") or "").strip()
        if not name:
            raise LabelError(f"Line {i + 2}: 'Path' is empty.")
        names.append(name)
        match = _CHEXPERT_PATIENT.search(name)
        patients.append(match.group(1) if match else name)
        for column, k in pairs:
            value = _value(row.get(column), line=i + 2, column=column, allowed=(1.0, 0.0, -1.0))
            if math.isnan(value):
                value = 0.0  # not mentioned in the report
            elif value == -1.0:
                report.uncertain_marks += 1
                value = {"ignore": math.nan, "positive": 1.0, "negative": 0.0}[uncertain]
            labels[i, k] = value
        for column in report.unmapped:
            if (row.get(column) or "").strip() in ("1", "1.0"):
                report.unmapped[column] += 1
    report.patient_source = "patient folder in Path"
    return names, patients, labels


def _onehot_rows(rows, columns, class_names, report, uncertain):
    path_column = "path" if "path" in columns else "file"
    pairs = _label_columns(columns, class_names, report)
    # Finding-like columns only: free-text columns (e.g. "source") are not findings.
    for column in list(report.unmapped):
        values = {(row.get(column) or "").strip() for row in rows}
        if not values <= {"0", "1", "0.0", "1.0", ""}:
            del report.unmapped[column]
    labels = np.full((len(rows), len(class_names)), np.nan)
    names, patients = [], []
    has_patient = "Patient ID" in columns
    for i, row in enumerate(rows):
        name = (row.get(path_column) or "").strip()
        if not name:
            raise LabelError(f"Line {i + 2}: {path_column!r} is empty.")
        names.append(name)
        patient = (row.get("Patient ID") or "").strip() if has_patient else ""
        patients.append(patient.lstrip("0") or "0" if patient else _patient_from_name(name) or name)
        for column, k in pairs:
            labels[i, k] = _value(row.get(column), line=i + 2, column=column, allowed=(1.0, 0.0))
        for column in report.unmapped:
            if (row.get(column) or "").strip() in ("1", "1.0"):
                report.unmapped[column] += 1
    report.patient_source = "Patient ID" if has_patient else "NIH file name prefix (else the file itself)"
    return names, patients, labels


@dataclass(frozen=True)
class StoredImage:
    """An analysed image in the `xray_images` storage, read like a Path (`.name`, `.read_bytes()`)."""

    name: str

    def read_bytes(self) -> bytes:
        from django.core.files.storage import storages

        with storages["xray_images"].open(self.name, "rb") as handle:
            return handle.read()

    def __str__(self) -> str:
        return f"xray_images:{self.name}"


def feedback_label_table(
    class_names: Sequence[str], *, unsure: str = "ignore", blinded_only: bool = False
) -> LabelTable | None:
    """The feedback-labelled predictions of the audit log as a label table: the latest mark per
    (prediction, finding); present 1, absent 0, unsure as `unsure` (ignore / positive / negative);
    findings nobody marked stay unlabelled. No patient data is stored, so each distinct image
    (its sha256) is its own group in a split. Each image says whether any of its marks was given
    after seeing the model's output (`after_model_output`, counted in the report: such labels may
    lean towards what the model said); `blinded_only` leaves those marks out. None when there is
    no feedback."""
    from audit.label_selectors import finding_labels_latest

    if unsure not in UNCERTAIN_POLICIES:
        raise LabelError(f"Unknown unsure policy {unsure!r}; one of {', '.join(UNCERTAIN_POLICIES)}.")
    index = class_index(class_names)
    report = MappingReport(label_format="feedback", uncertain=unsure, patient_source="image sha256")
    by_prediction: dict[int, dict] = {}
    unmapped: Counter[str] = Counter()
    for mark in finding_labels_latest():
        if mark.after_model_output:
            report.marks_after_model_output += 1
            if blinded_only:
                continue
        else:
            report.marks_blinded += 1
        k = index.get(normalise(mark.finding))
        if k is None:
            unmapped[mark.finding] += 1
            continue
        report.mapped[mark.finding] = class_names[k]
        entry = by_prediction.setdefault(
            mark.prediction_id,
            {
                "image": mark.prediction.image_url,
                "sha": mark.prediction.image_sha256,
                "labels": {},
                "after": False,
            },
        )
        entry["after"] = entry["after"] or mark.after_model_output
        value = {"present": 1.0, "absent": 0.0}.get(mark.value)
        if value is None:
            report.uncertain_marks += 1
            value = {"ignore": math.nan, "positive": 1.0, "negative": 0.0}[unsure]
        entry["labels"][k] = value
    report.unmapped = dict(unmapped)
    if not by_prediction:
        return None
    labels = np.full((len(by_prediction), len(class_names)), np.nan)
    paths, patients, after = [], [], []
    for i, entry in enumerate(by_prediction.values()):
        paths.append(StoredImage(entry["image"]))
        patients.append(entry["sha"])
        after.append(entry["after"])
        for k, value in entry["labels"].items():
            labels[i, k] = value
    report.rows = len(paths)
    report.classes_unlabelled = [n for k, n in enumerate(class_names) if np.isnan(labels[:, k]).all()]
    return LabelTable(
        paths=paths,
        labels=labels,
        class_names=list(class_names),
        patients=patients,
        report=report,
        source="audit log feedback" + (" (blinded marks only)" if blinded_only else ""),
        after_model_output=after,
    )
