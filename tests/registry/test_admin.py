import pytest
from django.contrib.messages import get_messages
from django.core.files.uploadedfile import SimpleUploadedFile
from django.urls import reverse

from registry.models import DEFAULT_CLASS_NAMES, ActivationEvent, ModelVersion
from registry.services import model_version_activate
from tests.conftest import starter_weights_bytes
from tests.registry.conftest import variant_weights_bytes, wrong_outputs_bytes

pytestmark = pytest.mark.django_db

CHANGELIST = "admin:registry_modelversion_changelist"


def messages_of(response) -> list[str]:
    return [str(m) for m in get_messages(response.wsgi_request)]


def change_url(version) -> str:
    return reverse("admin:registry_modelversion_change", args=[version.pk])


def test_it_lists_versions_for_model_admins(client, model_admin, starter_model):
    client.force_login(model_admin)
    response = client.get(reverse(CHANGELIST))
    assert response.status_code == 200
    body = response.content.decode()
    assert starter_model.version_name in body
    assert starter_model.short_sha256 in body
    assert "UNTRAINED" in body
    assert "Roll back" in body


def test_it_keeps_clinicians_out(client, clinician, starter_model):
    client.force_login(clinician)
    for url in (reverse(CHANGELIST), change_url(starter_model), reverse("admin:registry_modelversion_add")):
        response = client.get(url)
        assert response.status_code == 302
        assert "/admin/login/" in response["Location"]


def test_it_forbids_staff_clinicians_to_add_or_download(client, clinician, starter_model):
    clinician.is_staff = True
    clinician.save()
    client.force_login(clinician)
    assert client.get(reverse("admin:registry_modelversion_add")).status_code == 403
    weights = reverse("admin:registry_modelversion_weights", args=[starter_model.pk])
    assert client.get(weights).status_code == 403
    assert client.post(reverse("admin:registry_modelversion_rollback")).status_code == 403


def test_it_shows_the_change_page_with_tables_and_a_download(client, model_admin, starter_model):
    starter_model.per_class_auroc = {"Edema": 0.75}
    starter_model.thresholds = {"Edema": 0.3}
    starter_model.save()
    client.force_login(model_admin)
    response = client.get(change_url(starter_model))
    assert response.status_code == 200
    body = response.content.decode()
    assert 'id="untrained-warning"' in body
    assert "<td>Edema</td><td>0.750</td>" in body
    assert "<td>Edema</td><td>0.300</td>" in body
    assert "<td>Nodule</td><td>0.500</td>" in body
    assert reverse("admin:registry_modelversion_weights", args=[starter_model.pk]) in body
    assert "still active" in body


def test_it_changes_only_the_notes(client, model_admin, starter_model):
    client.force_login(model_admin)
    response = client.post(
        change_url(starter_model), {"notes": "new notes", "version_name": "renamed", "sha256": "0" * 64}
    )
    assert response.status_code == 302
    starter_model.refresh_from_db()
    assert starter_model.notes == "new notes"
    assert starter_model.version_name != "renamed"
    assert starter_model.sha256 != "0" * 64


def test_it_downloads_the_weights_for_model_admins(client, model_admin, starter_model):
    client.force_login(model_admin)
    response = client.get(reverse("admin:registry_modelversion_weights", args=[starter_model.pk]))
    assert response.status_code == 200
    assert b"".join(response.streaming_content) == starter_weights_bytes()
    assert response["X-Weights-SHA256"] == starter_model.sha256


def add_form(data: bytes, **extra) -> dict:
    form = {
        "weights": SimpleUploadedFile("w.pt", data),
        "version_name": "uploaded",
        "class_names_text": "\n".join(DEFAULT_CLASS_NAMES),
        "architecture": "densenet121",
        "auroc": "",
        "thresholds_json": '{"Edema": 0.4}',
        "preprocessing_json": "",
        "notes": "from the admin",
    }
    form.update(extra)
    return form


def test_it_registers_an_upload_through_the_add_form(client, model_admin):
    client.force_login(model_admin)
    response = client.post(reverse("admin:registry_modelversion_add"), add_form(variant_weights_bytes(21)))
    assert response.status_code == 302, response.content.decode()[:2000]
    version = ModelVersion.objects.get()
    assert version.version_name == "uploaded"
    assert version.thresholds == {"Edema": 0.4}
    assert version.created_by == model_admin
    assert not version.is_active


def test_it_shows_a_refusal_as_a_form_error(client, model_admin, settings):
    client.force_login(model_admin)
    response = client.post(reverse("admin:registry_modelversion_add"), add_form(wrong_outputs_bytes(5)))
    assert response.status_code == 200
    assert "5 outputs but 13 class names were given" in response.content.decode()
    assert not ModelVersion.objects.exists()


def test_it_activates_exactly_one_selected_version(client, model_admin, starter_model, register):
    other = register("other")
    client.force_login(model_admin)
    url = reverse(CHANGELIST)
    response = client.post(
        url, {"action": "activate_selected", "_selected_action": [starter_model.pk, other.pk]}, follow=True
    )
    assert "Select exactly one version to activate." in messages_of(response)
    assert ModelVersion.objects.get(is_active=True) == starter_model

    # One selected: first a confirmation page, nothing changed yet; then the confirmed POST.
    response = client.post(url, {"action": "activate_selected", "_selected_action": [other.pk]})
    assert response.status_code == 200 and 'id="activate-confirmation"' in response.content.decode()
    assert ModelVersion.objects.get(is_active=True) == starter_model
    response = client.post(
        url, {"action": "activate_selected", "_selected_action": [other.pk], "confirm": "yes"}, follow=True
    )
    assert "other is now the active version." in messages_of(response)
    assert ModelVersion.objects.get(is_active=True) == other
    event = ActivationEvent.objects.order_by("-id").first()
    assert (event.version, event.previous, event.via, event.activated_by) == (
        other,
        starter_model,
        "admin",
        model_admin,
    )


def test_it_rolls_back_from_the_button(client, model_admin, starter_model, register):
    other = register("other")
    model_version_activate(version=other)
    client.force_login(model_admin)
    assert (
        "Roll back to previous (starter-untrained-densenet121)"
        in client.get(reverse(CHANGELIST)).content.decode()
    )
    response = client.post(reverse("admin:registry_modelversion_rollback"), follow=True)
    assert any("Rolled back" in m for m in messages_of(response))
    assert ModelVersion.objects.get(is_active=True) == starter_model


def test_it_refuses_to_delete_a_version_that_was_ever_active(client, superuser, starter_model, register):
    unused = register("unused")
    client.force_login(superuser)
    response = client.post(
        reverse("admin:registry_modelversion_delete", args=[starter_model.pk]), {"post": "yes"}
    )
    assert response.status_code == 403
    assert ModelVersion.objects.filter(pk=starter_model.pk).exists()
    response = client.post(reverse("admin:registry_modelversion_delete", args=[unused.pk]), {"post": "yes"})
    assert response.status_code == 302
    assert not ModelVersion.objects.filter(pk=unused.pk).exists()


def test_it_lists_the_activation_history_read_only(client, model_admin, starter_model, register):
    model_version_activate(version=register("other"), user=model_admin, via="admin")
    client.force_login(model_admin)
    response = client.get(reverse("admin:registry_activationevent_changelist"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "other" in body and "still active" in body and "dave" in body
    event = ActivationEvent.objects.first()
    assert client.get(reverse("admin:registry_activationevent_add")).status_code == 403
    assert (
        client.post(
            reverse("admin:registry_activationevent_delete", args=[event.pk]), {"post": "yes"}
        ).status_code
        == 403
    )


def test_it_lets_a_staff_auditor_view_but_not_change(client, auditor, starter_model):
    auditor.is_staff = True
    auditor.save()
    client.force_login(auditor)
    assert client.get(reverse(CHANGELIST)).status_code == 200
    response = client.get(change_url(starter_model))
    assert response.status_code == 200
    assert 'name="notes"' not in response.content.decode()
    assert client.post(change_url(starter_model), {"notes": "x"}).status_code == 403
    assert client.get(reverse("admin:registry_activationevent_changelist")).status_code == 200


def test_it_activates_from_a_versions_page_after_confirmation(client, model_admin, starter_model, register):
    other = register("other")
    client.force_login(model_admin)
    page = client.get(change_url(other)).content.decode()
    activate = reverse("admin:registry_modelversion_activate", args=[other.pk])
    assert f'href="{activate}"' in page
    # The active version's page has no Activate button.
    assert 'id="activate-button"' not in client.get(change_url(starter_model)).content.decode()

    confirmation = client.get(activate)
    assert confirmation.status_code == 200
    body = confirmation.content.decode()
    assert "every prediction" in body and starter_model.version_name in body
    assert ModelVersion.objects.get(is_active=True) == starter_model

    response = client.post(activate, {"confirm": "yes"})
    assert response.status_code == 302 and response["Location"] == change_url(other)
    assert ModelVersion.objects.get(is_active=True) == other


def test_it_refuses_activation_to_staff_without_the_permission(client, clinician, starter_model, register):
    other = register("other")
    clinician.is_staff = True
    clinician.save()
    client.force_login(clinician)
    activate = reverse("admin:registry_modelversion_activate", args=[other.pk])
    assert client.post(activate, {"confirm": "yes"}).status_code == 403
    assert ModelVersion.objects.get(is_active=True) == starter_model


def test_it_shows_rounded_auroc_counts_and_the_lungsite_header(client, model_admin, starter_model):
    starter_model.accuracy_auroc = 0.5815787528912306
    starter_model.per_class_auroc = {"Edema": {"auroc": 0.61234, "positives": 12, "negatives": 88}}
    starter_model.save()
    client.force_login(model_admin)
    body = client.get(change_url(starter_model)).content.decode()
    assert "0.582" in body and "0.5815787528912306" not in body
    assert "<td>Edema</td><td>0.612</td><td>12</td><td>88</td>" in body
    assert "lungsite registry" in body and "Django administration" not in body
    listing = client.get(reverse(CHANGELIST)).content.decode()
    assert "0.582" in listing and "white-space:nowrap" in listing


def test_it_puts_an_upload_progress_bar_on_the_add_page(client, model_admin):
    client.force_login(model_admin)
    body = client.get(reverse("admin:registry_modelversion_add")).content.decode()
    assert 'id="upload-progress-bar"' in body and "admin_upload" in body and "js" in body
