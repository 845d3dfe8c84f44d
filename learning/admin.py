"""Learning's part of the admin: the evaluation block of a version (per-class AUROC with
positives/negatives, set and date, ROC curves as a PNG, the model card), the actions "Train from
this version", "Set as shadow" and "Activate with a written reason", the shadow comparison page,
and the TrainingRun and Evaluation lists. The registry's ModelVersionAdmin is registered again here
with these added, so the registry app knows nothing of learning."""

from __future__ import annotations

import io

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from learning.models import TrainingRun
from registry.admin import ActivationEventAdmin as RegistryActivationEventAdmin
from registry.admin import ModelVersionAdmin as RegistryModelVersionAdmin
from registry.models import ActivationEvent, Evaluation, ModelVersion

ACTIVATE_PERMISSION = "registry.activate_modelversion"
OVERRIDE_ACTION = "Activate, overriding the evaluation gate with a written reason"
EVALUATION_FIELDS = (
    "honesty",
    "evaluation_summary",
    "roc_curves",
    "model_card_text",
    "shadow_status",
    "training_runs_list",
)


def roc_png(evaluation: Evaluation, *, size: int = 480) -> bytes:
    """ROC curves of every class of `evaluation` (from its stored labels and scores), drawn with
    Pillow: one polyline per class on a unit square, the chance diagonal dashed."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont
    from sklearn.metrics import roc_curve

    margin, legend = 56, 190
    image = Image.new("RGB", (size + legend, size), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default(size=13)
    side = size - 2 * margin

    def xy(fpr: float, tpr: float) -> tuple[float, float]:
        return margin + fpr * side, size - margin - tpr * side

    draw.rectangle([xy(0, 1), xy(1, 0)], outline="black")
    for t in range(0, 11):
        x0, y0 = xy(t / 10, 0)
        draw.line([(x0, y0), (x0, y0 + 4)], fill="black")
        draw.line([xy(0, t / 10), (margin - 4, xy(0, t / 10)[1])], fill="black")
        if t % 2 == 0:  # numbers every 0.2, on both axes
            draw.text((x0, y0 + 6), f"{t / 10:.1f}", fill="black", font=font, anchor="mt")
            draw.text((margin - 7, xy(0, t / 10)[1]), f"{t / 10:.1f}", fill="black", font=font, anchor="rm")
    for t in range(0, 20, 2):
        draw.line([xy(t / 20, t / 20), xy((t + 1) / 20, (t + 1) / 20)], fill="grey")
    axes = {"fill": "black", "font": font}
    draw.text((margin + side / 2, size - 12), "false positive rate (1 - specificity)", **axes, anchor="ms")
    draw.text((margin, margin - 14), "true positive rate (sensitivity)", **axes, anchor="ls")
    outputs = evaluation.outputs or {}
    names = outputs.get("class_names", [])
    labels = np.array(outputs.get("labels", []), dtype=float)
    scores = np.array(outputs.get("scores", []), dtype=float)
    palette = [
        "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
        "#7f7f7f", "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39",
    ]  # fmt: skip
    row = 0
    for k, name in enumerate(names):
        if labels.size == 0:
            break
        known = ~np.isnan(labels[:, k])
        y, s = labels[known, k], scores[known, k]
        if not ((y == 1).any() and (y == 0).any()):
            continue
        fpr, tpr, _ = roc_curve(y, s)
        colour = palette[k % len(palette)]
        draw.line([xy(f, t) for f, t in zip(fpr, tpr, strict=True)], fill=colour, width=2)
        auroc = (evaluation.per_class.get(name) or {}).get("auroc")
        text = f"{name} {auroc:.2f}" if auroc is not None else name
        draw.line(
            [(size + 5, margin + row * 16 + 6), (size + 25, margin + row * 16 + 6)], fill=colour, width=3
        )
        draw.text((size + 30, margin + row * 16), text, fill="black", font=font)
        row += 1
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


class TrainForm(forms.Form):
    version_name = forms.CharField(max_length=200)
    labels = forms.CharField(
        required=False, help_text="Path on the server of a label CSV (NIH, CheXpert or one-hot)."
    )
    images = forms.CharField(required=False, help_text="Folder on the server holding the table's images.")
    feedback = forms.BooleanField(
        required=False, initial=True, help_text="Add the feedback-labelled predictions."
    )
    epochs = forms.IntegerField(min_value=1, max_value=200, initial=10)
    batch_size = forms.IntegerField(min_value=1, max_value=256, initial=16)
    lr = forms.FloatField(min_value=1e-7, max_value=1.0, initial=1e-4)
    max_minutes = forms.FloatField(min_value=0.1, required=False, initial=30)

    def clean(self):
        data = super().clean()
        if not data.get("labels") and not data.get("feedback"):
            raise forms.ValidationError("Give a label table or use the feedback labels.")
        if data.get("labels") and not data.get("images"):
            raise forms.ValidationError("Give the folder of the label table's images.")
        if ModelVersion.objects.filter(version_name=data.get("version_name", "")).exists():
            raise forms.ValidationError("A version with this name already exists.")
        return data


def activation_reason(event: ActivationEvent) -> str:
    """What the history says of why: "rollback", or the gate's override with the reason written."""
    if event.override_reason:
        return f"{event.reason or 'evaluation gate overridden'}: {event.override_reason}"
    return event.reason


class ReasonForm(forms.Form):
    reason = forms.CharField(
        widget=forms.Textarea(attrs={"rows": 4, "cols": 80}),
        min_length=10,
        help_text="Why this version should serve although the evaluation gate refused it "
        "(kept in the history).",
    )


class EvaluationAdminMixin:
    """Mixed into registry.admin.ModelVersionAdmin below."""

    # ---- read-only blocks ----

    @admin.display(description="warning")
    def honesty(self, obj):
        warning = obj.honesty_warning()
        return format_html('<strong class="lungsite-warning">{}</strong>', warning) if warning else "-"

    @admin.display(description="evaluation")
    def evaluation_summary(self, obj):
        if obj.evaluated_at is None:
            return "Not evaluated: run manage.py evaluate_model (or train_model, which evaluates)."
        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (
                    name,
                    "-" if auroc is None else f"{auroc:.3f}",
                    (obj.per_class_counts or {}).get(name, {}).get("positives", "?"),
                    (obj.per_class_counts or {}).get(name, {}).get("negatives", "?"),
                )
                for name, auroc in (obj.per_class_auroc or {}).items()
            ),
        )
        mean = "-" if obj.accuracy_auroc is None else f"{obj.accuracy_auroc:.3f}"
        return format_html(
            "<p>{} · {} · mean AUROC {}</p><table><tr><th>finding</th><th>AUROC</th><th>positives</th>"
            "<th>negatives</th></tr>{}</table>",
            obj.evaluation_set,
            obj.evaluated_at.strftime("%Y-%m-%d %H:%M UTC"),
            mean,
            rows,
        )

    @admin.display(description="ROC curves")
    def roc_curves(self, obj):
        evaluation = obj.evaluations.first() if obj.pk else None
        if evaluation is None:
            return "-"
        url = reverse("admin:registry_modelversion_roc", args=[evaluation.pk])
        return format_html('<img src="{}" alt="ROC curves of {}" width="670">', url, obj.version_name)

    @admin.display(description="model card")
    def model_card_text(self, obj):
        if not obj.model_card:
            return "-"
        from learning.training import model_card_markdown

        return format_html('<pre style="white-space:pre-wrap">{}</pre>', model_card_markdown(obj.model_card))

    @admin.display(description="shadow")
    def shadow_status(self, obj):
        if not obj.is_shadow:
            return "no"
        url = reverse("admin:registry_modelversion_shadow")
        return format_html('yes: scores live predictions off the record · <a href="{}">comparison</a>', url)

    @admin.display(description="training runs")
    def training_runs_list(self, obj):
        runs = TrainingRun.objects.filter(base_version=obj)[:10] if obj.pk else []
        if not runs:
            return "-"
        return format_html_join(
            "",
            '<p><a href="{}">run {}</a>: {} {}</p>',
            (
                (reverse("admin:learning_trainingrun_change", args=[r.pk]), r.pk, r.status, r.message[:120])
                for r in runs
            ),
        )

    @admin.display(description="activation history")
    def activation_history(self, obj):
        # The registry's table with the reason written by whoever overrode the evaluation gate.
        events = list(
            ActivationEvent.objects.with_deactivated_at().filter(version=obj).select_related("activated_by")
        )
        if not events:
            return "Never activated."
        rows = [
            (
                f"{e.activated_at:%Y-%m-%d %H:%M:%S %Z}",
                f"{e.deactivated_at:%Y-%m-%d %H:%M:%S %Z}" if e.deactivated_at else "still active",
                e.activated_by.get_username() if e.activated_by else "-",
                e.get_via_display(),
                activation_reason(e) or "-",
            )
            for e in events
        ]
        return self._table(("active from", "to", "by", "via", "reason"), rows)

    # ---- the evaluation gate, before the confirmation page ----

    def _activate_confirmation(self, request, version, *, action_url, hidden):
        """The registry's confirmation page, saying first when the evaluation gate will refuse, and
        where the override is (for those who may use it)."""
        from registry.gate import activation_gate

        response = super()._activate_confirmation(request, version, action_url=action_url, hidden=hidden)
        response.context_data["gate"] = activation_gate(version)
        response.context_data["can_override"] = request.user.has_perm(ACTIVATE_PERMISSION)
        response.context_data["changelist_url"] = reverse("admin:registry_modelversion_changelist")
        return response

    def _activate(self, request, version) -> None:
        from registry.gate import activation_gate

        gate = activation_gate(version)
        if gate is not None and not version.is_active:
            self.message_user(
                request,
                f"Not activated: the evaluation gate refuses it. {gate} To activate it anyway, select it in "
                f'the list and run "{OVERRIDE_ACTION}" with a written reason.',
                messages.ERROR,
            )
            return
        super()._activate(request, version)

    # ---- actions ----

    def get_actions(self, request):
        actions = super().get_actions(request)
        if request.user.has_perm(ACTIVATE_PERMISSION):
            for name in ("activate_with_reason", "train_from_version", "set_as_shadow", "clear_shadow"):
                func, action_name, description = self.get_action(name)
                actions[action_name] = (func, action_name, description)
        return actions

    @admin.action(description=OVERRIDE_ACTION)
    def activate_with_reason(self, request, queryset):
        from registry.gate import activation_gate
        from registry.services import ActivationError, model_version_activate

        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version.", messages.ERROR)
            return None
        version = queryset.get()
        form = ReasonForm(request.POST if "reason" in request.POST else None)
        if form.is_bound and form.is_valid():
            try:
                model_version_activate(
                    version=version,
                    user=request.user,
                    via=ActivationEvent.VIA_ADMIN,
                    override_reason=form.cleaned_data["reason"],
                )
            except ActivationError as exc:
                self.message_user(request, str(exc), messages.ERROR)
                return None
            self.message_user(request, f"{version.version_name} is now the active version.", messages.SUCCESS)
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Activate {version.version_name}",
            "version": version,
            "gate": activation_gate(version),
            "form": form,
            "action": "activate_with_reason",
            "opts": self.model._meta,
        }
        return render(request, "admin/registry/activate_reason.html", context)

    @admin.action(description="Train from this version (a Celery job)")
    def train_from_version(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to train from.", messages.ERROR)
            return None
        version = queryset.get()
        form = TrainForm(request.POST if "version_name" in request.POST else None)
        if form.is_bound and form.is_valid():
            run = TrainingRun.objects.create(
                base_version=version, options=form.cleaned_data, created_by=request.user
            )
            transaction.on_commit(lambda: _enqueue(run.pk))
            url = reverse("admin:learning_trainingrun_change", args=[run.pk])
            self.message_user(
                request,
                format_html(
                    'Training run <a href="{}">{}</a> queued from {}.', url, run.pk, version.version_name
                ),
                messages.SUCCESS,
            )
            return None
        context = {
            **self.admin_site.each_context(request),
            "title": f"Train from {version.version_name}",
            "version": version,
            "form": form,
            "action": "train_from_version",
            "opts": self.model._meta,
        }
        return render(request, "admin/registry/train_form.html", context)

    @admin.action(description="Set as the shadow version (scores live predictions off the record)")
    def set_as_shadow(self, request, queryset):
        from learning.shadow import ShadowError, shadow_version_set

        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version.", messages.ERROR)
            return
        try:
            version = shadow_version_set(version=queryset.get())
        except ShadowError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        self.message_user(request, f"{version.version_name} is now the shadow version.", messages.SUCCESS)

    @admin.action(description="Stop shadow scoring")
    def clear_shadow(self, request, queryset):
        from learning.shadow import shadow_version_set

        shadow_version_set(version=None)
        self.message_user(request, "No version is the shadow now.", messages.SUCCESS)

    # ---- pages ----

    def get_urls(self):
        custom = [
            path(
                "evaluations/<int:pk>/roc.png",
                self.admin_site.admin_view(self.roc_view),
                name="registry_modelversion_roc",
            ),
            path(
                "shadow/", self.admin_site.admin_view(self.shadow_view), name="registry_modelversion_shadow"
            ),
        ]
        return custom + super().get_urls()

    def roc_view(self, request, pk):
        if not self.has_view_permission(request):
            raise PermissionDenied
        evaluation = get_object_or_404(Evaluation, pk=pk)
        return HttpResponse(roc_png(evaluation), content_type="image/png")

    def shadow_view(self, request):
        from learning.shadow import shadow_comparison, shadow_version_get

        if not self.has_view_permission(request):
            raise PermissionDenied
        shadow = shadow_version_get()
        context = {
            **self.admin_site.each_context(request),
            "title": "Shadow version against the live versions",
            "comparison": shadow_comparison(version=shadow) if shadow else None,
            "active": ModelVersion.objects.filter(is_active=True).first(),
            "opts": self.model._meta,
        }
        return render(request, "admin/registry/shadow.html", context)


def _enqueue(run_id: int) -> None:
    """Hands the run to a Celery worker; when no broker answers, the run says so instead of waiting."""
    from django.utils import timezone

    from learning.tasks import training_run_task

    try:
        training_run_task.delay(run_id)
    except Exception as exc:  # noqa: BLE001 - kombu raises several kinds for an unreachable broker
        TrainingRun.objects.filter(pk=run_id, status=TrainingRun.QUEUED).update(
            status=TrainingRun.FAILED,
            message=f"Could not queue the job ({type(exc).__name__}): is the Celery broker running? "
            "Or run manage.py train_model.",
            finished_at=timezone.now(),
        )


@admin.register(TrainingRun)
class TrainingRunAdmin(admin.ModelAdmin):
    list_display = ("id", "base_version", "status", "progress_text", "result_version", "created_at")
    readonly_fields = (
        "base_version",
        "result_version",
        "status",
        "progress_text",
        "options",
        "message",
        "created_at",
        "started_at",
        "finished_at",
        "created_by",
    )
    fields = readonly_fields

    @admin.display(description="progress")
    def progress_text(self, obj):
        p = obj.progress or {}
        if not p:
            return "-"
        auroc = p.get("val_mean_auroc")
        return (
            f"epoch {p.get('epoch')} step {p.get('step')}/{p.get('steps')}"
            + (f", loss {p['loss']:.4f}" if "loss" in p else "")
            + (f", val mean AUROC {auroc:.3f}" if auroc is not None else "")
        )

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


@admin.register(Evaluation)
class EvaluationAdmin(admin.ModelAdmin):
    list_display = ("version", "evaluation_set", "n_images", "mean_auroc", "created_at")
    readonly_fields = (
        "version",
        "evaluation_set",
        "set_sha256",
        "n_images",
        "per_class",
        "mean_auroc",
        "created_at",
    )
    exclude = ("outputs",)

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


admin.site.unregister(ModelVersion)
admin.site.unregister(ActivationEvent)


@admin.register(ActivationEvent)
class ActivationEventAdmin(RegistryActivationEventAdmin):
    """The registry's activation history, with the reason of an override of the evaluation gate."""

    list_display = ("version", "activated_at", "until", "activated_by", "via", "previous", "why")

    @admin.display(description="reason")
    def why(self, obj):
        return activation_reason(obj) or "-"


@admin.register(ModelVersion)
class ModelVersionAdmin(EvaluationAdminMixin, RegistryModelVersionAdmin):
    change_fields = RegistryModelVersionAdmin.change_fields + EVALUATION_FIELDS
