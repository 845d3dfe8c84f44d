import csv
import io

import numpy as np
import pytest
from django.core.files.uploadedfile import SimpleUploadedFile

from audit.models import Prediction
from jobs.models import JobImage, PredictionJob

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]


def _parts(files):
    return {"images": [SimpleUploadedFile(name, data, content_type="image/png") for name, data in files]}


def test_it_analyses_every_image_and_logs_one_batch_row_each(
    api, clinician, starter_model, eager_jobs, nih_pngs, settings
):
    settings.LUNGSITE_BATCH_SIZE = 2
    files = nih_pngs(3)
    with eager_jobs():
        response = api(clinician).post("/api/v1/jobs/", _parts(files), format="multipart")
    assert response.status_code == 202, response.content
    job = PredictionJob.objects.get(pk=response.json()["id"])
    assert (job.state, job.total, job.done, job.refused, job.failed) == ("done", 3, 3, 0, 0)
    assert job.model_at_start == starter_model
    rows = Prediction.objects.filter(source="batch")
    assert rows.count() == 3
    assert set(rows.values_list("model_id", flat=True)) == {starter_model.pk}
    assert all(row.user_id == clinician.pk for row in rows)
    assert JobImage.objects.filter(job=job, prediction__isnull=False).count() == 3

    progress = api(clinician).get(f"/api/v1/jobs/{job.pk}/").json()
    assert progress["state"] == "done" and progress["done"] == 3
    assert progress["versions"] == [
        {
            "id": starter_model.pk,
            "version_name": starter_model.version_name,
            "sha256": starter_model.sha256,
            "images": 3,
        }
    ]
    assert progress["untrained"] is True and "UNTRAINED" in progress["warning"]


def test_it_gives_the_same_probabilities_as_single_uploads(
    api, clinician, starter_model, eager_jobs, nih_pngs
):
    files = nih_pngs(2)
    with eager_jobs():
        job_id = api(clinician).post("/api/v1/jobs/", _parts(files), format="multipart").json()["id"]
    response = api(clinician).get(f"/api/v1/jobs/{job_id}/results.csv")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/csv")
    table = list(csv.DictReader(io.StringIO(response.content.decode())))
    assert [row["file_name"] for row in table] == [name for name, _ in files]

    for (name, data), row in zip(files, table, strict=True):
        single = api(clinician).post(
            "/api/v1/predictions/", {"image": SimpleUploadedFile(name, data)}, format="multipart"
        )
        assert single.status_code == 201
        body = single.json()
        assert row["image_sha256"] == body["image_sha256"]
        assert row["model_version"] == body["model"]["version_name"]
        assert row["state"] == "done" and row["untrained"] == "1"
        for finding in body["findings"]:
            assert float(row[f"{finding['name']}_probability"]) == pytest.approx(finding["score"], abs=2e-5)
            assert row[f"{finding['name']}_positive"] == str(int(finding["positive"]))


def test_it_shows_a_job_to_its_owner_and_auditors_only(
    api, clinician, other_clinician, auditor, starter_model, eager_jobs, nih_pngs
):
    with eager_jobs():
        job_id = api(clinician).post("/api/v1/jobs/", _parts(nih_pngs(1)), format="multipart").json()["id"]
    assert api(clinician).get(f"/api/v1/jobs/{job_id}/").status_code == 200
    assert api(auditor).get(f"/api/v1/jobs/{job_id}/").status_code == 200
    assert api(auditor).get(f"/api/v1/jobs/{job_id}/results.csv").status_code == 200
    assert api(other_clinician).get(f"/api/v1/jobs/{job_id}/").status_code == 404
    assert api(other_clinician).get(f"/api/v1/jobs/{job_id}/results.csv").status_code == 404
    assert api().get(f"/api/v1/jobs/{job_id}/").status_code == 401
    refused = api(auditor).post("/api/v1/jobs/", _parts(nih_pngs(1)), format="multipart")
    assert refused.status_code == 403
    assert PredictionJob.objects.count() == 1


def test_it_refuses_a_request_without_files(api, clinician, starter_model):
    response = api(clinician).post("/api/v1/jobs/", {}, format="multipart")
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "no_files"
    assert PredictionJob.objects.count() == 0


def test_it_cancels_a_queued_job_and_logs_nothing_for_it(
    api, clinician, other_clinician, starter_model, nih_pngs, django_capture_on_commit_callbacks
):
    # Not eager: the tasks stay queued (the on-commit callbacks that would queue them are dropped).
    with django_capture_on_commit_callbacks(execute=False):
        job_id = api(clinician).post("/api/v1/jobs/", _parts(nih_pngs(2)), format="multipart").json()["id"]
    assert api(other_clinician).post(f"/api/v1/jobs/{job_id}/cancel/").status_code == 404
    response = api(clinician).post(f"/api/v1/jobs/{job_id}/cancel/")
    assert response.status_code == 200
    assert response.json()["state"] == "cancelled"
    assert set(JobImage.objects.filter(job_id=job_id).values_list("state", flat=True)) == {"cancelled"}

    from jobs.services import job_images_analyse

    job_images_analyse(
        job_id=job_id, image_ids=list(JobImage.objects.filter(job_id=job_id).values_list("pk", flat=True))
    )
    assert Prediction.objects.count() == 0


def test_it_serves_the_page_with_progress_and_csv(client, clinician, starter_model, eager_jobs, nih_pngs):
    client.force_login(clinician)
    assert client.get("/jobs/").status_code == 200
    name, data = nih_pngs(1)[0]
    with eager_jobs():
        response = client.post("/jobs/", {"images": [SimpleUploadedFile(f"folder/{name}", data)]})
    assert response.status_code == 302
    job = PredictionJob.objects.get()
    page = client.get(response["Location"])
    assert page.status_code == 200
    assert b"webkitdirectory" in client.get("/jobs/").content
    assert starter_model.version_name.encode() in page.content
    assert b"UNTRAINED model" in page.content
    table = list(csv.DictReader(io.StringIO(client.get(f"/jobs/{job.pk}/results.csv").content.decode())))
    # Django keeps the base name of an uploaded file (its multipart parser drops folders).
    assert table[0]["file_name"] == name and table[0]["state"] == "done"
    probabilities = [float(v) for k, v in table[0].items() if k.endswith("_probability")]
    assert len(probabilities) == 13 and np.all(np.isfinite(probabilities))


def test_it_keeps_spreadsheet_formulas_out_of_the_results_csv(
    api, clinician, starter_model, eager_jobs, nih_pngs
):
    import zipfile

    [(_, png)] = nih_pngs(1)
    names = ['=HYPERLINK("http://x.example","y").png', "+1.png", "@SUM(A1).png", "-2.png", "\tcmd.png"]
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr(names[0], png)
        for name in names[1:]:
            zipped.writestr(name, b"not an image")
    upload = SimpleUploadedFile("study.zip", archive.getvalue(), content_type="application/zip")
    with eager_jobs():
        response = api(clinician).post("/api/v1/jobs/", {"images": [upload]}, format="multipart")
    assert response.status_code == 202, response.content
    text = api(clinician).get(f"/api/v1/jobs/{response.json()['id']}/results.csv").content.decode()
    table = list(csv.DictReader(io.StringIO(text)))
    assert sorted(row["file_name"] for row in table) == sorted("'" + name for name in names)
    assert [row["state"] for row in table if row["file_name"] == "'" + names[0]] == ["done"]
    # No line of the file starts a cell with a formula character.
    for line in text.splitlines()[1:]:
        assert not any(cell.startswith(("=", "+", "-", "@")) for cell in next(csv.reader([line])))


def test_it_refuses_text_parts_empty_parts_and_an_archive_that_is_not_a_zip(
    api, clinician, starter_model, nih_pngs
):
    [(name, png)] = nih_pngs(1)
    client = api(clinician)
    text = client.post("/api/v1/jobs/", {"images": "not a file"}, format="multipart")
    assert text.status_code == 400 and text.json()["error"]["code"] == "not_a_file"
    not_zip = client.post("/api/v1/jobs/", {"archive": SimpleUploadedFile(name, png)}, format="multipart")
    assert not_zip.status_code == 415 and not_zip.json()["error"]["code"] == "not_a_zip"
    assert PredictionJob.objects.count() == 0
    # An empty image is a member the job refuses (code `empty`), as every door refuses it.
    empty = client.post("/api/v1/jobs/", {"images": [SimpleUploadedFile("e.png", b"")]}, format="multipart")
    assert empty.status_code == 202
    assert JobImage.objects.get(job_id=empty.json()["id"]).code == "empty"
