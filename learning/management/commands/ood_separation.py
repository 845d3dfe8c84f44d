import csv
from pathlib import Path

import numpy as np
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from learning.ood import ood_reference_load
from learning.scoring import score_with_serving_graph
from registry.management.commands._output import dumps, one_line
from registry.models import Evaluation, ModelVersion
from registry.selectors import model_version_get_by_ref

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".dcm", ".dicom"}


def _paths(source: str) -> list[Path]:
    """A folder (its images, recursively), a label CSV (its `path` or `file` column, relative to
    the CSV's folder) or one image file."""
    path = Path(source)
    if path.is_dir():
        return sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if path.suffix.lower() == ".csv":
        with path.open(newline="", encoding="utf-8-sig") as handle:
            rows = list(csv.DictReader(handle))
        column = "path" if rows and "path" in rows[0] else "file"
        return [path.parent / row[column] for row in rows if row.get(column)]
    if path.is_file():
        return [path]
    raise CommandError(one_line(f"{source} is not a folder, a CSV or an image file."))


class Command(BaseCommand):
    help = (
        "How far each group of images lies from a version's evaluated inputs (out-of-distribution "
        "distance), and how well that tells each group from the first (prints JSON)."
    )

    def add_arguments(self, parser):
        parser.add_argument("ref", help="version id or version name")
        parser.add_argument(
            "--group",
            action="append",
            required=True,
            help="NAME=SOURCE[,SOURCE...]: a folder, a label CSV or image files; the first group is the "
            "held-out images like the evaluation's, the others are compared with it",
        )
        parser.add_argument("--evaluation", type=int, help="whose reference (default: the one in force)")

    def handle(self, *args, **options):
        from sklearn.metrics import roc_auc_score

        try:
            version = model_version_get_by_ref(options["ref"])
        except ModelVersion.DoesNotExist as exc:
            raise CommandError(one_line(f"No model version with id or name {options['ref']!r}.")) from exc
        evaluation = (
            Evaluation.objects.filter(pk=options["evaluation"], version=version).first()
            if options["evaluation"]
            else version.evaluation_in_force()
        )
        if evaluation is None or evaluation.ood_threshold is None:
            raise CommandError(
                one_line(f"{version.version_name} has no evaluation with a feature reference.")
            )
        reference = ood_reference_load(
            Evaluation.objects.filter(pk=evaluation.pk).values_list("ood_reference", flat=True).get()
        )
        groups = []
        for spec in options["group"]:
            name, _, sources = spec.partition("=")
            if not name or not sources:
                raise CommandError(one_line(f"--group {spec!r}: expected NAME=SOURCE[,SOURCE...]."))
            paths = [p for source in sources.split(",") for p in _paths(source)]
            scored = score_with_serving_graph(version, paths, max_pixels=settings.LUNGSITE_MAX_PIXELS)
            distances = reference.distance(scored.features) if len(scored.features) else np.zeros(0)
            groups.append((name, paths, scored, distances))
        inside = groups[0][3]
        report = []
        for name, paths, scored, distances in groups:
            entry = {
                "group": name,
                "images": len(distances),
                "unreadable": scored.skipped,
                "outside": int((distances > reference.threshold).sum()),
                "share_outside": round(float((distances > reference.threshold).mean()), 4)
                if len(distances)
                else None,
                "distance_quantiles": {
                    q: round(float(np.quantile(distances, float(q))), 2) for q in ("0.1", "0.5", "0.9")
                }
                if len(distances)
                else None,
                "per_image": {
                    paths[i].name: round(float(d), 2) for i, d in zip(scored.scored, distances, strict=True)
                }
                if len(distances) <= 20
                else None,
            }
            if name != groups[0][0] and len(distances) and len(inside):
                y = np.r_[np.zeros(len(inside)), np.ones(len(distances))]
                entry["auroc_against_first"] = round(float(roc_auc_score(y, np.r_[inside, distances])), 4)
            report.append(entry)
        self.stdout.write(
            dumps(
                {
                    "version": version.version_name,
                    "evaluation": {
                        "id": evaluation.pk,
                        "evaluation_set": evaluation.evaluation_set,
                        "reference_images": reference.n,
                        "threshold": round(reference.threshold, 3),
                        "quantile": reference.quantile,
                    },
                    "groups": report,
                }
            )
        )
