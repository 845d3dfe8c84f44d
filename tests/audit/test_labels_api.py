import numpy as np
import pytest
from django.test import Client

from audit.label_selectors import feedback_csv_cell, finding_labels_by_prediction
from audit.models import AppendOnlyError, FindingLabel, Prediction
from registry.models import DEFAULT_CLASS_NAMES, ModelVersion

pytestmark = pytest.mark.django_db


@pytest.fixture
def prediction(clinician):
    model = ModelVersion.objects.create(
        version_name="rows-only-v1",
        storage_path="weights/none.pt",
        class_names=DEFAULT_CLASS_NAMES,
        sha256="c" * 64,
    )
    return Prediction.objects.create(
        model=model,
        image_url="images/none.png",
        results_json={
            "model": {
                "id": model.pk,
                "version_name": model.version_name,
                "sha256": model.sha256,
                "untrained": False,
            },
            "findings": [
                {"name": n, "probability": 0.25, "threshold": 0.5, "positive": False}
                for n in DEFAULT_CLASS_NAMES
            ],
        },
        image_sha256="0" * 64,
        user=clinician,
        source=Prediction.SOURCE_API,
        heatmaps={},
    )


def url(prediction) -> str:
    return f"/api/v1/predictions/{prediction.pk}/labels/"


def test_it_appends_marks_and_the_latest_is_the_label(api, clinician, auditor, prediction):
    response = api(clinician).post(
        url(prediction),
        {"labels": [{"finding": "Edema", "value": "present"}, {"finding": "Mass", "value": "unsure"}]},
        format="json",
    )
    assert response.status_code == 201, response.content
    response = api(auditor).post(
        url(prediction), {"labels": [{"finding": "Edema", "value": "absent"}]}, format="json"
    )
    assert response.status_code == 201
    assert FindingLabel.objects.filter(prediction=prediction).count() == 3
    body = api(clinician).get(url(prediction)).json()
    assert {(m["finding"], m["value"], m["user"]) for m in body["labels"]} == {
        ("Edema", "absent", auditor.username),
        ("Mass", "unsure", clinician.username),
    }
    assert [m["value"] for m in body["history"]] == ["absent", "unsure", "present"]
    assert finding_labels_by_prediction([prediction.pk]) == {
        prediction.pk: {"Edema": "absent", "Mass": "unsure"}
    }
    assert feedback_csv_cell({"Mass": "unsure", "Edema": "absent"}) == "Edema=absent; Mass=unsure"


def test_it_refuses_unknown_findings_and_values_writing_nothing(api, clinician, prediction):
    client = api(clinician)
    unknown = client.post(
        url(prediction), {"labels": [{"finding": "Fracture", "value": "present"}]}, format="json"
    )
    assert unknown.status_code == 400
    assert "Fracture" in unknown.json()["error"]["message"]
    bad = client.post(
        url(prediction),
        {"labels": [{"finding": "Edema", "value": "present"}, {"finding": "Mass", "value": "maybe"}]},
        format="json",
    )
    assert bad.status_code == 400
    assert client.post(url(prediction), {"labels": []}, format="json").status_code == 400
    assert FindingLabel.objects.count() == 0


def test_it_hides_other_peoples_predictions(api, other_clinician, prediction):
    assert api(other_clinician).get(url(prediction)).status_code == 404
    response = api(other_clinician).post(
        url(prediction), {"labels": [{"finding": "Edema", "value": "present"}]}
    )
    assert response.status_code == 404
    assert api().get(url(prediction)).status_code in (401, 403)
    assert FindingLabel.objects.count() == 0


def test_it_keeps_marks_append_only(clinician, prediction):
    mark = FindingLabel.objects.create(
        prediction=prediction, finding="Edema", value="present", user=clinician
    )
    mark.value = "absent"
    with pytest.raises(AppendOnlyError):
        mark.save()
    with pytest.raises(AppendOnlyError):
        FindingLabel.objects.all().delete()


def test_it_takes_feedback_from_the_result_page_form(clinician, prediction):
    client = Client()
    client.force_login(clinician)
    page = client.get(f"/predictions/{prediction.pk}/")
    assert page.status_code == 200
    assert b'name="label-Edema"' in page.content
    assert b"NOT EVALUATED model" in page.content
    response = client.post(
        f"/predictions/{prediction.pk}/labels/", {"label-Edema": "present", "label-Mass": ""}
    )
    assert response.status_code == 302
    assert list(FindingLabel.objects.values_list("finding", "value", "user")) == [
        ("Edema", "present", clinician.pk)
    ]
    # Saving the same form again appends nothing: only changed marks are written.
    client.post(f"/predictions/{prediction.pk}/labels/", {"label-Edema": "present"})
    assert FindingLabel.objects.count() == 1
    page = client.get(f"/predictions/{prediction.pk}/")
    assert b'value="present" id="label-Edema-present"' in page.content


def test_it_accepts_the_names_label_tables_accept_and_says_who_saw_the_output(api, clinician, prediction):
    from learning.labels import feedback_label_table

    response = api(clinician).post(
        url(prediction),
        {
            "labels": [
                {"finding": "Pleural Effusion", "value": "present"},
                {"finding": "pleural-thickening", "value": "absent"},
                {"finding": "infiltrates", "value": "present"},
            ]
        },
        format="json",
    )
    assert response.status_code == 201, response.content
    marks = {m["finding"]: m for m in response.json()["labels"]}
    assert set(marks) == {"Effusion", "Pleural_Thickening", "Infiltration"}
    assert all(m["after_model_output"] is True for m in marks.values())  # the default: output was shown
    blinded = api(clinician).post(
        url(prediction),
        {"labels": [{"finding": "Edema", "value": "present"}], "after_model_output": False},
        format="json",
    )
    assert blinded.status_code == 201
    assert FindingLabel.objects.get(finding="Edema").after_model_output is False
    # Two names of one finding with different marks: refused, nothing written.
    clash = api(clinician).post(
        url(prediction),
        {
            "labels": [
                {"finding": "Effusion", "value": "absent"},
                {"finding": "Pleural Effusion", "value": "present"},
            ]
        },
        format="json",
    )
    assert clash.status_code == 400 and FindingLabel.objects.count() == 4

    # What training reads says which marks were given after seeing the model's output.
    table = feedback_label_table(DEFAULT_CLASS_NAMES)
    assert table.after_model_output == [True]
    report = table.report.as_dict()
    assert (report["marks_after_model_output"], report["marks_blinded"]) == (3, 1)
    only_blinded = feedback_label_table(DEFAULT_CLASS_NAMES, blinded_only=True)
    edema = DEFAULT_CLASS_NAMES.index("Edema")
    assert only_blinded.after_model_output == [False] and only_blinded.labels[0, edema] == 1.0
    assert np.isnan(only_blinded.labels[0, DEFAULT_CLASS_NAMES.index("Effusion")])
