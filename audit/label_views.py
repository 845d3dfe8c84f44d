"""The feedback form of the result page (templates/audit/_feedback.html) posts here."""

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import Http404, HttpResponseBadRequest, HttpResponseRedirect
from django.urls import reverse
from django.views.decorators.http import require_POST

from audit import label_services, selectors
from audit.label_selectors import finding_labels_latest
from audit.models import Prediction


def _back_to_form(prediction: Prediction) -> HttpResponseRedirect:
    # To the form, not the top of the page: the confirmation shows where the marks were made.
    return HttpResponseRedirect(reverse("prediction-detail", args=[prediction.pk]) + "#feedback")


@require_POST
@login_required
def prediction_labels_post(request, pk: int):
    try:
        prediction = selectors.prediction_get_for(user=request.user, pk=pk)
    except Prediction.DoesNotExist:
        raise Http404("No prediction with this id is visible to you.") from None
    current = {mark.finding: mark.value for mark in finding_labels_latest(prediction=prediction)}
    # Radio groups are named "label-<finding>"; only changed marks are appended, so saving the form
    # again does not repeat every mark.
    marks = {}
    for key, value in request.POST.items():
        if key.startswith("label-") and value:
            finding = key[len("label-") :]
            if current.get(finding) != value:
                marks[finding] = value
    if not marks:
        messages.info(request, "Nothing changed: no feedback saved.")
        return _back_to_form(prediction)
    try:
        label_services.finding_labels_add(prediction=prediction, marks=marks, user=request.user)
    except label_services.LabelRefused as exc:
        return HttpResponseBadRequest(str(exc))
    names = ", ".join(sorted(name.replace("_", " ") for name in marks))
    messages.success(
        request, f"Feedback saved for {len(marks)} finding{'s' if len(marks) != 1 else ''}: {names}."
    )
    return _back_to_form(prediction)
