import io
import zipfile

import pytest

from audit.checkpoints import CHECKPOINT_DIR
from audit.models import Prediction
from common.errors import Refused
from jobs.models import JobImage, PredictionJob
from jobs.services import job_create

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]


def _zip(entries: list[tuple[str, bytes]], *, compression=zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, data in entries:
            archive.writestr(name, data)
    return buffer.getvalue()


def _stored_files(root) -> list:
    # Not the chain's checkpoints, which an append writes whenever the ids pass a multiple of
    # LUNGSITE_AUDIT_CHECKPOINT_EVERY (ids keep growing from test to test on Postgres).
    return [p for p in root.rglob("*") if p.is_file() and CHECKPOINT_DIR not in p.relative_to(root).parts]


def test_it_refuses_hostile_members_and_analyses_the_rest(
    clinician, starter_model, eager_jobs, nih_pngs, settings, tmp_path
):
    settings.LUNGSITE_MAX_UPLOAD_MB = 2  # one image inflated; the bomb inflates to 50 MB
    settings.LUNGSITE_AUDIT_CHECKPOINT_EVERY = 1  # a checkpoint with every row, whatever the ids
    (good_name, good), (second_name, second) = nih_pngs(2)
    bomb = _zip([("bomb.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (50 * 1024 * 1024))])
    archive = _zip(
        [
            (good_name, good),
            ("inner.zip", _zip([("x.png", good)])),
            ("../../etc/evil.png", good),
            ("/abs/evil.png", good),
            ("notes.txt", b"patient name: nobody"),
            ("empty.png", b""),
            ("bomb.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (50 * 1024 * 1024)),
            ("folder/" + second_name, second),
        ]
    )
    assert len(bomb) < 100_000  # what a bomb looks like on the wire
    with eager_jobs():
        job = job_create(user=clinician, source="api", files=[("batch.zip", archive)])
    job.refresh_from_db()
    assert (job.state, job.total, job.done, job.refused, job.failed) == ("done", 8, 2, 6, 0)
    reasons = dict(JobImage.objects.filter(job=job, state="refused").values_list("name", "reason"))
    assert "nested archives" in reasons["inner.zip"]
    assert "path traversal" in reasons["../../etc/evil.png"]
    assert "absolute path" in reasons["/abs/evil.png"]
    assert "not an image" in reasons["notes.txt"]
    assert "empty" in reasons["empty.png"]
    assert "bytes" in reasons["bomb.png"] and "allowed per image" in reasons["bomb.png"]
    assert Prediction.objects.count() == 2
    assert set(JobImage.objects.filter(job=job, state="done").values_list("name", flat=True)) == {
        good_name,
        "folder/" + second_name,
    }
    # Only the two logged images remain in storage: no staged bytes, nothing for refused members.
    stored = _stored_files(tmp_path / "storage" / "xray-images")
    assert sorted(p.name for p in stored) == sorted(
        p.split("/")[-1] for p in Prediction.objects.values_list("image_url", flat=True)
    )


def test_it_refuses_a_member_whose_header_lies_about_its_size(clinician, starter_model, nih_pngs, settings):
    settings.LUNGSITE_MAX_UPLOAD_MB = 1
    archive = bytearray(_zip([("lies.png", b"\x89PNG\r\n\x1a\n" + b"\0" * (3 * 1024 * 1024))]))
    # Declare 100 bytes inflated in both headers; the stream still inflates to 3 MB.
    local = archive.index(b"PK\x03\x04")
    archive[local + 22 : local + 26] = (100).to_bytes(4, "little")
    central = archive.index(b"PK\x01\x02")
    archive[central + 24 : central + 28] = (100).to_bytes(4, "little")
    job = job_create(user=clinician, source="api", files=[("lies.zip", bytes(archive))])
    image = JobImage.objects.get(job=job)
    assert image.state == "refused" and image.staged_name == ""
    assert "cannot be extracted" in image.reason or "allowed per image" in image.reason


def test_it_counts_images_past_the_job_limit_as_refused(
    clinician, starter_model, eager_jobs, nih_pngs, settings
):
    settings.LUNGSITE_MAX_JOB_IMAGES = 2
    with eager_jobs():
        job = job_create(user=clinician, source="api", files=nih_pngs(3))
    job.refresh_from_db()
    assert (job.total, job.done, job.refused) == (3, 2, 1)
    assert "limit of 2 images" in JobImage.objects.get(job=job, state="refused").reason
    assert Prediction.objects.count() == 2


def test_it_refuses_an_image_that_does_not_decode_and_goes_on(clinician, starter_model, eager_jobs, nih_pngs):
    name, data = nih_pngs(1)[0]
    truncated = data[: len(data) // 3]
    with eager_jobs():
        job = job_create(user=clinician, source="api", files=[("cut.png", truncated), (name, data)])
    job.refresh_from_db()
    assert (job.state, job.done, job.refused) == ("done", 1, 1)
    assert "cut.png" in JobImage.objects.get(job=job, state="refused").reason
    assert Prediction.objects.count() == 1


def test_it_refuses_an_archive_that_is_not_a_zip(clinician, starter_model):
    with pytest.raises(Refused) as refused:
        job_create(user=clinician, source="api", files=[("x.zip", b"PK\x03\x04 this is not a zip")])
    assert refused.value.code == "bad_archive"
    assert PredictionJob.objects.count() == 0


def test_it_answers_400_for_a_broken_zip_through_the_api(api, clinician, starter_model):
    from django.core.files.uploadedfile import SimpleUploadedFile

    response = api(clinician).post(
        "/api/v1/jobs/", {"archive": SimpleUploadedFile("x.zip", b"PK\x03\x04garbage")}, format="multipart"
    )
    assert response.status_code == 400
    assert "not a readable ZIP" in response.json()["error"]["message"]
    assert PredictionJob.objects.count() == 0
