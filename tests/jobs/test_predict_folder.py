import csv
import json

import pytest
from django.core.management import call_command

from audit.models import Prediction
from jobs.models import JobImage, PredictionJob

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("one_torch_thread")]


@pytest.mark.django_db(transaction=True)  # the command's job is queued on commit, as in production
def test_it_writes_the_results_csv_of_a_folder(starter_model, nih_pngs, tmp_path, capsys):
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    files = nih_pngs(2)
    (folder / files[0][0]).write_bytes(files[0][1])
    (folder / "sub" / files[1][0]).write_bytes(files[1][1])
    (folder / "readme.txt").write_text("not an image")
    out = tmp_path / "results.csv"
    call_command("predict_folder", str(folder), "--here", "--out", str(out), "--timeout", "300")
    printed = json.loads(capsys.readouterr().out)
    assert (printed["state"], printed["total"], printed["done"], printed["refused"]) == ("done", 3, 2, 1)
    table = list(csv.DictReader(out.open()))
    assert [row["file_name"] for row in table] == [files[0][0], "readme.txt", f"sub/{files[1][0]}"]
    assert [row["state"] for row in table] == ["done", "refused", "done"]
    assert Prediction.objects.filter(source="batch").count() == 2
    assert PredictionJob.objects.get().source == "command"


def test_it_picks_up_an_activation_between_batches(
    clinician, starter_model, nih_pngs, settings, django_capture_on_commit_callbacks
):
    """A job records the version of every image: an activation during the job applies from the
    next batch on."""
    from jobs.services import job_create, job_images_analyse
    from registry.services import model_version_activate, model_version_register
    from tests.conftest import starter_weights_bytes

    settings.LUNGSITE_BATCH_SIZE = 1
    with django_capture_on_commit_callbacks(execute=False):  # nothing queued: batches run by hand
        job = job_create(user=clinician, source="api", files=nih_pngs(2))
    first, second = JobImage.objects.filter(job=job).order_by("position")
    job_images_analyse(job_id=job.pk, image_ids=[first.pk])
    other = model_version_register(
        data=starter_weights_bytes(),
        version_name="second-version",
        class_names=starter_model.class_names,
        untrained=True,
    )
    model_version_activate(version=other, via="command")
    job_images_analyse(job_id=job.pk, image_ids=[second.pk])
    first.refresh_from_db()
    second.refresh_from_db()
    assert (first.model_version_id, second.model_version_id) == (starter_model.pk, other.pk)
    assert first.prediction.model_id == starter_model.pk and second.prediction.model_id == other.pk
    job.refresh_from_db()
    assert job.state == "done" and job.model_at_start_id == starter_model.pk
    from jobs.selectors import job_versions

    assert [v["version_name"] for v in job_versions(job=job)] == [
        starter_model.version_name,
        "second-version",
    ]


def test_it_gives_batch_outputs_equal_to_single_forward_passes(starter_model, nih_pngs):
    import numpy as np

    from engine.decode import decode_gray
    from engine.pipeline import predict, predict_batch, preprocess
    from registry.cache import get_active

    serving = get_active()
    tensors = [preprocess(decode_gray(data), serving.version.preprocessing) for _, data in nih_pngs(3)]
    batch = predict_batch(serving.model, np.concatenate(tensors))
    for tensor, output in zip(tensors, batch, strict=True):
        single = predict(serving.model, tensor)
        np.testing.assert_allclose(output.probabilities, single.probabilities, atol=1e-5)
        np.testing.assert_allclose(output.cams, single.cams, atol=1e-4)
