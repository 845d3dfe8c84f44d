"""Learning's part of the admin as a model-admin uses it: training runs and evaluations open, the
evaluation gate says no before the confirmation and points to the override, the override's reason
is in the history, and the ROC picture has numbered axes."""

import io

import numpy as np
import pytest
from django.urls import reverse
from PIL import Image

from learning.models import TrainingRun
from learning.plots import roc_figure, roc_png
from registry.models import DEFAULT_CLASS_NAMES, ActivationEvent, Evaluation
from registry.services import model_version_activate, model_version_register
from tests.registry.conftest import variant_weights_bytes

pytestmark = pytest.mark.django_db

CHANGELIST = "/admin/registry/modelversion/"


def _candidate(name="candidate"):
    return model_version_register(
        data=variant_weights_bytes(11), version_name=name, class_names=DEFAULT_CLASS_NAMES
    )


def _evaluation(version) -> Evaluation:
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 2, size=(40, 3)).astype(float)
    scores = 0.6 * labels + 0.4 * rng.random(labels.shape)
    names = ["Effusion", "Mass", "Nodule"]
    return Evaluation.objects.create(
        version=version,
        evaluation_set="synthetic",
        set_sha256="c" * 64,
        n_images=40,
        per_class={n: {"auroc": 0.9, "positives": 20, "negatives": 20} for n in names},
        mean_auroc=0.9,
        mean_auroc_low=0.84,
        mean_auroc_high=0.95,
        outputs={"class_names": names, "labels": labels.tolist(), "scores": scores.tolist()},
    )


def test_a_model_admin_opens_training_runs_and_evaluations(client, model_admin, starter_model):
    run = TrainingRun.objects.create(base_version=starter_model, status=TrainingRun.DONE)
    evaluation = _evaluation(starter_model)
    client.force_login(model_admin)
    for url in (
        reverse("admin:learning_trainingrun_changelist"),
        reverse("admin:learning_trainingrun_change", args=[run.pk]),
        reverse("admin:registry_evaluation_changelist"),
        reverse("admin:registry_evaluation_change", args=[evaluation.pk]),
    ):
        assert client.get(url).status_code == 200, url
    # Read-only: nothing to add or change.
    assert client.get(reverse("admin:learning_trainingrun_add")).status_code == 403


def test_train_from_this_version_lands_on_the_runs_page(client, model_admin, starter_model, settings):
    settings.CELERY_BROKER_URL = "memory://"
    client.force_login(model_admin)
    response = client.post(
        CHANGELIST,
        {
            "action": "train_from_version",
            "_selected_action": [starter_model.pk],
            "version_name": "from-the-admin",
            "feedback": "on",
            "epochs": 1,
            "batch_size": 4,
            "lr": 0.0001,
            "max_minutes": 1,
        },
        follow=True,
    )
    run = TrainingRun.objects.get()
    link = reverse("admin:learning_trainingrun_change", args=[run.pk])
    assert link in response.content.decode()
    assert client.get(link).status_code == 200


def test_the_gate_refuses_before_the_confirmation_and_says_where_the_override_is(
    client, model_admin, starter_model, settings
):
    settings.LUNGSITE_ACTIVATION_GATE = True
    candidate = _candidate()
    client.force_login(model_admin)
    page = client.get(reverse("admin:registry_modelversion_activate", args=[candidate.pk])).content.decode()
    assert 'id="gate-refusal"' in page and "has no evaluation" in page
    assert 'id="confirm-activate"' not in page  # no "Yes, activate" that would then be refused
    override = page.split('id="override-form"')[1].split("</form>")[0]
    assert 'value="activate_with_reason"' in override and f'value="{candidate.pk}"' in override
    # Following it: the reason form of the override action.
    form = client.post(CHANGELIST, {"action": "activate_with_reason", "_selected_action": candidate.pk})
    assert form.status_code == 200 and b'name="reason"' in form.content
    # A confirmation sent anyway (an old page) is refused, naming the override.
    refused = client.post(
        reverse("admin:registry_modelversion_activate", args=[candidate.pk]), {"confirm": "yes"}, follow=True
    )
    assert "Activate, overriding the evaluation gate with a written reason" in refused.content.decode()
    candidate.refresh_from_db()
    assert not candidate.is_active


def test_the_gate_lets_an_evaluated_version_confirm_as_before(client, model_admin, starter_model, settings):
    settings.LUNGSITE_ACTIVATION_GATE = True
    candidate = _candidate()
    _evaluation(candidate)
    client.force_login(model_admin)
    page = client.get(reverse("admin:registry_modelversion_activate", args=[candidate.pk])).content.decode()
    assert 'id="confirm-activate"' in page and 'id="gate-refusal"' not in page


def test_the_history_shows_the_reason_of_an_override(client, model_admin, starter_model, settings):
    settings.LUNGSITE_ACTIVATION_GATE = True
    candidate = _candidate()
    model_version_activate(
        version=candidate, user=model_admin, via="admin", override_reason="Ethics board approval 42."
    )
    client.force_login(model_admin)
    listing = client.get(reverse("admin:registry_activationevent_changelist")).content.decode()
    assert "evaluation gate overridden: Ethics board approval 42." in listing
    version_page = client.get(
        reverse("admin:registry_modelversion_change", args=[candidate.pk])
    ).content.decode()
    assert "Ethics board approval 42." in version_page
    assert ActivationEvent.objects.filter(version=candidate).count() == 1


def test_the_roc_picture_numbers_and_names_both_axes(starter_model):
    evaluation = _evaluation(starter_model)
    axes = roc_figure(evaluation).axes[0]
    for ticks in (axes.get_xticklabels(), axes.get_yticklabels()):
        shown = {label.get_text() for label in ticks}
        assert {"0.0", "0.2", "0.4", "0.6", "0.8", "1.0"} <= shown
    assert "False positive rate" in axes.get_xlabel() and "True positive rate" in axes.get_ylabel()
    with Image.open(io.BytesIO(roc_png(evaluation))) as picture:
        assert picture.format == "PNG" and picture.width > 400
