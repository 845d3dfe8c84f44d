"""Pages of the batch jobs: /jobs/ (submit a folder or a ZIP, list of jobs) and /jobs/<id>/
(progress bar fed by the API, results CSV, the versions that ran)."""

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.core.files.uploadedfile import UploadedFile
from django.http import Http404
from django.shortcuts import redirect, render
from django.views.decorators.http import require_GET, require_http_methods

from audit.filters import finding_top, findings_ranked
from common.errors import LungsiteError
from jobs import selectors, services
from jobs.apis import results_csv_response
from jobs.models import JobImage, PredictionJob
from registry.selectors import model_version_get_active


def _files(request) -> list[tuple[str, UploadedFile]]:
    return [(f.name, f) for f in request.FILES.getlist("archive") + request.FILES.getlist("images")]


@require_http_methods(["GET", "POST"])
@login_required
def job_list(request):
    can_create = request.user.has_perm(selectors.CREATE)
    error, status = None, 200
    if request.method == "POST":
        if not can_create:
            raise PermissionDenied
        try:
            job = services.job_create(user=request.user, source="web", files=_files(request))
        except LungsiteError as exc:
            error, status = str(exc), exc.status
        else:
            return redirect("job-detail", pk=job.pk)
    context = {
        "jobs": selectors.jobs_visible_to(user=request.user)[:50],
        "can_create": can_create,
        "active": model_version_get_active(),
        "error": error,
    }
    return render(request, "jobs/list.html", context, status=status)


def _visible(request, pk: int) -> PredictionJob:
    try:
        return selectors.job_get_for(user=request.user, pk=pk)
    except PredictionJob.DoesNotExist:
        raise Http404(f"Job {pk} not found.") from None


# The job page lists this many of its images (the CSV has them all).
JOB_IMAGES_SHOWN = 500


@require_GET
@login_required
def job_detail(request, pk: int):
    job = _visible(request, pk)
    images = list(
        JobImage.objects.filter(job=job)
        .select_related("prediction")
        .defer("prediction__heatmaps", "prediction__heatmap_data")
        .order_by("position")[:JOB_IMAGES_SHOWN]
    )
    for image in images:
        image.top = finding_top(findings_ranked(image.prediction.results_json)) if image.prediction else None
    context = {
        "job": job,
        "progress": selectors.job_progress(job=job),
        "images": images,
        "images_more": max(0, job.total - len(images)),
        "finished": job.state in (PredictionJob.STATE_DONE, PredictionJob.STATE_CANCELLED),
    }
    return render(request, "jobs/detail.html", context)


@require_GET
@login_required
def job_results(request, pk: int):
    return results_csv_response(_visible(request, pk))
