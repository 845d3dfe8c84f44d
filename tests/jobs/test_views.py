"""The job pages: every image with its file name, state and a link to its result; the CSV offered
once the job has finished; progress that does not pretend."""

import re

from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils.html import escape

from jobs.models import JobImage, PredictionJob
from jobs.services import job_create


def test_it_links_each_image_of_a_finished_job_to_its_result(
    client, clinician, starter_model, eager_jobs, nih_pngs
):
    client.force_login(clinician)
    files = [SimpleUploadedFile(name, data) for name, data in nih_pngs(2)]
    files.append(SimpleUploadedFile("notes.txt", b"not an image"))
    with eager_jobs():
        response = client.post("/jobs/", {"images": files})
    job = PredictionJob.objects.get()
    html = client.get(response["Location"]).content.decode()
    assert job.state == "done" and job.done == 2 and job.refused == 1

    table = html.split('class="list job-images"')[1].split("</table>")[0]
    for image in JobImage.objects.filter(job=job).order_by("position"):
        row = table.split(f">{image.name}</span>")[1].split("</tr>")[0]
        if image.prediction_id:
            assert f'href="/predictions/{image.prediction_id}/"' in row and "Logged" in row
        else:
            assert "Refused" in row and escape(image.reason) in row
    assert f'href="/jobs/{job.pk}/results.csv"' in html.split('id="job-results"')[1].split("</p>")[0]
    assert 'id="job-results" hidden' not in html
    assert re.search(r'<progress id="job-bar" max="3" value="3">', html)


def test_it_offers_no_csv_and_an_indeterminate_bar_while_nothing_has_finished(
    client, clinician, starter_model, nih_pngs
):
    # Not eager: the job stays queued (no worker in this test).
    job = job_create(user=clinician, source="web", files=nih_pngs(2))
    client.force_login(clinician)
    html = client.get(f"/jobs/{job.pk}/").content.decode()
    assert job.state == "queued"
    assert 'id="job-results" hidden' in html and "can be downloaded when the job has finished" in html
    assert '<progress id="job-bar" max="2">' in html  # no value: indeterminate, not stuck at 0
    assert "0 of 2 finished" in html
    assert html.count("Pending") >= 2


def test_it_lists_jobs_in_a_table_that_fits_a_phone(client, clinician, starter_model, nih_pngs):
    job = job_create(user=clinician, source="web", files=nih_pngs(1))
    client.force_login(clinician)
    html = client.get("/jobs/").content.decode()
    listing = html.split('<table class="list">')[1].split("</table>")[0]
    assert f'href="/jobs/{job.pk}/"' in listing and 'data-label="Images"' in listing
