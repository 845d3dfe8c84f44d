"""REST API of the batch jobs: thin views over jobs.services and jobs.selectors. A job the caller
may not see is a 404."""

from django.conf import settings
from django.core.files.uploadedfile import UploadedFile
from django.http import HttpResponse
from drf_spectacular.utils import OpenApiRequest, extend_schema
from rest_framework import exceptions, status
from rest_framework.parsers import MultiPartParser
from rest_framework.response import Response
from rest_framework.views import APIView

from common.api_errors import error_responses
from common.csv_export import csv_text
from common.errors import LungsiteError
from common.permissions import has_perm
from jobs import selectors, services
from jobs.intake import is_zip
from jobs.models import PredictionJob

CanCreateJobs = has_perm(selectors.CREATE)


def _visible_job(request, pk: int) -> PredictionJob:
    try:
        return selectors.job_get_for(user=request.user, pk=pk)
    except PredictionJob.DoesNotExist:
        raise exceptions.NotFound(f"Job {pk} not found.") from None


def _progress(request, job: PredictionJob) -> dict:
    data = selectors.job_progress(job=job)
    data["results_csv"] = request.build_absolute_uri(f"/api/v1/jobs/{job.pk}/results.csv")
    data["problems"] = selectors.job_problems(job=job)
    return data


def files_from_request(request) -> list[tuple[str, UploadedFile]]:
    """The uploaded parts (Django spools large ones to disk; jobs.intake reads them in chunks):
    every `images` part and an optional `archive` (ZIP) part. A text field under either name is
    refused: it is not a file, and ignoring it would analyse less than was sent."""
    for name in ("images", "archive"):
        if request.POST.getlist(name):
            raise LungsiteError(
                f"`{name}` must be sent as file parts (filename=...); a text field was sent.",
                code="not_a_file",
                status=400,
            )
    if len(request.FILES.getlist("archive")) > 1:
        raise LungsiteError("Send at most one `archive` part.", code="invalid", status=400)
    limit = settings.LUNGSITE_MAX_JOB_MB * 1024 * 1024
    files = []
    for archive in request.FILES.getlist("archive"):
        head = archive.read(4)
        archive.seek(0)
        if not head:
            raise LungsiteError(f"The `archive` part {archive.name!r} is empty.", code="empty", status=400)
        if not is_zip(head):
            raise LungsiteError(
                f"The `archive` part {archive.name!r} is not a ZIP archive; send images as `images` parts.",
                code="not_a_zip",
                status=415,
            )
    for upload in request.FILES.getlist("archive") + request.FILES.getlist("images"):
        if upload.size is not None and upload.size > limit:
            raise LungsiteError(
                f"{upload.name!r} is larger than the job limit.", code="too_large", status=413
            )
        files.append((upload.name, upload))
    return files


# The upload as the schema describes it: `images` file parts, an `archive` file part, or both (with
# neither: 400 no_files; "one of" is left out of the schema, where multipart cannot express it).
JOB_UPLOAD_REQUEST = OpenApiRequest(
    {
        "type": "object",
        "properties": {
            "images": {
                "type": "array",
                # An empty image is refused as a member of the job (code `empty`), as at every door.
                "items": {"type": "string", "format": "binary"},
                # No minItems: multipart cannot tell an empty list from none (then `archive` is needed).
                "description": "Images (PNG, JPEG or DICOM), one file part each.",
            },
            "archive": {
                "type": "string",
                "format": "binary",
                "minLength": 1,
                "description": "A ZIP of images.",
            },
        },
    },
    encoding={
        "images": {"contentType": "image/png, image/jpeg, application/dicom, application/octet-stream"},
        "archive": {"contentType": "application/zip"},
    },
)


class JobListCreateApi(APIView):
    parser_classes = [MultiPartParser]

    def get_permissions(self):
        return [CanCreateJobs()] if self.request.method == "POST" else super().get_permissions()

    @extend_schema(operation_id="jobs_list", responses={200: dict}, tags=["jobs"])
    def get(self, request):
        jobs = selectors.jobs_visible_to(user=request.user)[:100]
        return Response({"results": [selectors.job_progress(job=job) for job in jobs]})

    @extend_schema(
        operation_id="jobs_create",
        summary="Analyse many images as one batch job",
        description=(
            "Several `images` parts and/or one `archive` part (a ZIP of PNG, JPEG or DICOM files). "
            "Members that cannot be analysed are counted as refused with a reason; the rest are "
            "queued for the Celery workers. Returns 202 with the job's progress."
        ),
        request={"multipart/form-data": JOB_UPLOAD_REQUEST},
        responses={202: dict, **error_responses(400, 401, 403, 413, 415, 503)},
        tags=["jobs"],
    )
    def post(self, request):
        files = files_from_request(request)
        if not files:
            raise LungsiteError(
                "Send images as `images` parts or a ZIP as `archive`.", code="no_files", status=400
            )
        job = services.job_create(user=request.user, source="api", files=files)
        job.refresh_from_db()
        return Response(_progress(request, job), status=status.HTTP_202_ACCEPTED)


class JobDetailApi(APIView):
    @extend_schema(
        operation_id="jobs_retrieve", responses={200: dict, **error_responses(401, 404)}, tags=["jobs"]
    )
    def get(self, request, pk: int):
        return Response(_progress(request, _visible_job(request, pk)))


class JobResultsCsvApi(APIView):
    @extend_schema(
        operation_id="jobs_results_csv",
        responses={(200, "text/csv"): str, **error_responses(401, 404)},
        tags=["jobs"],
    )
    def get(self, request, pk: int):
        return results_csv_response(_visible_job(request, pk))


def results_csv_response(job: PredictionJob) -> HttpResponse:
    # Member names come from the uploader: csv_text escapes those a spreadsheet would run.
    response = HttpResponse(
        csv_text(selectors.job_results_rows(job=job)), content_type="text/csv; charset=utf-8"
    )
    response["Content-Disposition"] = f'attachment; filename="job-{job.pk}-results.csv"'
    return response


class JobCancelApi(APIView):
    @extend_schema(
        operation_id="jobs_cancel",
        request=None,
        responses={200: dict, **error_responses(401, 403, 404)},
        tags=["jobs"],
    )
    def post(self, request, pk: int):
        job = _visible_job(request, pk)
        if job.user_id != request.user.pk and not request.user.has_perm("jobs.change_predictionjob"):
            raise exceptions.PermissionDenied("Only the job's owner can cancel it.")
        job = services.job_cancel(job=job)
        return Response(_progress(request, job))
