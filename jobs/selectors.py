"""Reads of the batch jobs: who may see which job, its progress, and its results as CSV rows."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import QuerySet

from jobs.models import JobImage, PredictionJob

VIEW_ALL = "audit.view_all_predictions"  # auditors see every job, as they see every prediction
CREATE = "audit.add_prediction"  # clinicians: who may analyse images may submit a job


def jobs_visible_to(*, user) -> QuerySet[PredictionJob]:
    jobs = PredictionJob.objects.select_related("user", "model_at_start")
    if user.is_superuser or user.has_perm(VIEW_ALL):
        return jobs
    return jobs.filter(user=user)


def job_get_for(*, user, pk: int) -> PredictionJob:
    """The job, if `user` may see it; raises PredictionJob.DoesNotExist otherwise (a 404)."""
    return jobs_visible_to(user=user).get(pk=pk)


def job_versions(*, job: PredictionJob) -> list[dict]:
    """The versions that produced the job's results, with how many images each."""
    rows = (
        JobImage.objects.filter(job=job, model_version__isnull=False)
        .values("model_version_id", "model_version__version_name", "model_version__sha256")
        .order_by("model_version_id")
    )
    counts: dict[int, dict] = {}
    for row in rows:
        entry = counts.setdefault(
            row["model_version_id"],
            {
                "id": row["model_version_id"],
                "version_name": row["model_version__version_name"],
                "sha256": row["model_version__sha256"],
                "images": 0,
            },
        )
        entry["images"] += 1
    return list(counts.values())


def job_honesty(*, job: PredictionJob) -> list[dict]:
    """What the job's results must say about the versions that made them: each distinct honesty
    statement recorded on its predictions (analysis.results), with how many images carry it."""
    seen: dict[tuple[str, str | None], dict] = {}
    images = JobImage.objects.filter(job=job, prediction__isnull=False).select_related("prediction__model")
    for image in images.only("prediction__results_json", "prediction__created_at", "prediction__model"):
        honesty = image.prediction.honesty
        key = (honesty["state"], honesty.get("statement"))
        seen.setdefault(key, {"state": key[0], "statement": key[1], "images": 0})["images"] += 1
    return list(seen.values())


def job_progress(*, job: PredictionJob) -> dict:
    honesty = job_honesty(job=job)
    statements = [entry["statement"] for entry in honesty if entry["statement"]]
    return {
        "id": job.pk,
        "created_at": job.created_at,
        "finished_at": job.finished_at,
        "source": job.source,
        "state": job.state,
        "total": job.total,
        "done": job.done,
        "refused": job.refused,
        "failed": job.failed,
        "pending": max(0, job.total - job.finished) if job.state != PredictionJob.STATE_CANCELLED else 0,
        "model_at_start": (
            {"id": job.model_at_start.pk, "version_name": job.model_at_start.version_name}
            if job.model_at_start
            else None
        ),
        "versions": job_versions(job=job),
        "untrained": any(entry["state"] == "untrained" for entry in honesty),
        "honesty": honesty,
        # Set when any result of the job comes from a version that is untrained, not evaluated or
        # otherwise not to be relied on: the same statements its single predictions carry.
        "warning": " ".join(statements) or None,
    }


def job_problems(*, job: PredictionJob, limit: int = 200) -> list[dict]:
    rows = JobImage.objects.filter(job=job).exclude(state__in=[JobImage.STATE_DONE, JobImage.STATE_PENDING])
    return [{"name": r.name, "state": r.state, "reason": r.reason} for r in rows.order_by("position")[:limit]]


CSV_FIXED_COLUMNS = [
    "file_name",
    "image_sha256",
    "state",
    "reason",
    "prediction_id",
    "model_version",
    "model_sha256",
    "untrained",
    "warning",
]


def job_results_rows(*, job: PredictionJob) -> Iterator[list]:
    """The header, then one row per image in submission order: the fixed columns, then for each
    finding `<finding>_probability` and `<finding>_positive` (1/0, the version's threshold)."""
    images = list(
        JobImage.objects.filter(job=job).select_related("prediction", "model_version").order_by("position")
    )
    findings: list[str] = []
    for image in images:
        if image.prediction_id:
            for finding in image.prediction.results_json.get("findings", []):
                if finding["name"] not in findings:
                    findings.append(finding["name"])
    yield CSV_FIXED_COLUMNS + [f"{name}_{kind}" for name in findings for kind in ("probability", "positive")]
    for image in images:
        row = [image.name, image.sha256, image.state, image.reason]
        by_name = {}
        if image.prediction_id:
            recorded = image.prediction.recorded_model
            row += [
                image.prediction_id,
                recorded["version_name"],
                recorded["sha256"],
                int(bool(recorded["untrained"])),
                image.prediction.honesty_statement or "",
            ]
            by_name = {f["name"]: f for f in image.prediction.results_json.get("findings", [])}
        else:
            row += ["", "", "", "", ""]
        for name in findings:
            finding = by_name.get(name)
            row += [f"{finding['probability']:.6f}", int(bool(finding["positive"]))] if finding else ["", ""]
        yield row
