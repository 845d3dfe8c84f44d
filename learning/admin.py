"""Learning's part of the admin: the evaluation block of a version (the evaluation in force:
per-class AUROC with its 95 % interval and positives/negatives, "not evaluable" findings, the mean
with its interval, calibration, subgroups, the out-of-distribution threshold; ROC curves and
reliability diagrams as PNG; the model card), the actions "Train from this version", "Set as
shadow" and "Activate with a written reason", the shadow comparison page, and the TrainingRun and
Evaluation lists. The registry's ModelVersionAdmin is registered again here
with these added, so the registry app knows nothing of learning."""

from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join

from learning.models import TrainingRun
from registry.admin import ModelVersionAdmin as RegistryModelVersionAdmin
from registry.models import ActivationEvent, Evaluation, ModelVersion

ACTIVATE_PERMISSION = "registry.activate_modelversion"
OVERRIDE_ACTION = "Activate, overriding the evaluation gate with a written reason"
EVALUATION_FIELDS = (
    "honesty",
    "evaluation_summary",
    "roc_curves",
    "calibration_summary",
    "model_card_text",
    "shadow_status",
    "training_runs_list",
)


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

    @admin.display(description="evaluation in force")
    def evaluation_summary(self, obj):
        evaluation = obj.evaluation_in_force() if obj.pk else None
        if evaluation is None:
            others = obj.evaluations.exclude(kind=Evaluation.HELD_OUT).count() if obj.pk else 0
            extra = (
                f" ({others} validation or in-sample evaluation(s), which never speak for it)"
                if others
                else ""
            )
            return (
                "Not evaluated on held-out images: run manage.py evaluate_model on images it was not "
                f"trained on (train_model evaluates its test split){extra}."
            )

        def auroc(entry):
            if entry.get("auroc") is None:
                return format_html(
                    "<em>not evaluable</em>: {}", entry.get("reason") or "no positives or negatives"
                )
            ci = entry.get("ci")
            return f"{entry['auroc']:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

        rows = format_html_join(
            "",
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            (
                (name, auroc(entry), entry.get("positives", "?"), entry.get("negatives", "?"))
                for name, entry in (evaluation.per_class or {}).items()
            ),
        )
        ci = evaluation.mean_auroc_ci
        mean = "-" if evaluation.mean_auroc is None else f"{evaluation.mean_auroc:.3f}"
        if ci:
            mean += f" (95 % CI {ci[0]:.3f}-{ci[1]:.3f})"
        settings_used = (evaluation.details or {}).get("settings", {})
        gaps = [
            f"{attribute}: {' vs '.join(gap['groups'])} differ by {gap['difference']:+.3f} "
            f"(95 % CI {gap['ci'][0]:+.3f} to {gap['ci'][1]:+.3f})"
            for attribute, report in ((evaluation.details or {}).get("subgroups") or {}).items()
            for gap in report.get("gaps", [])
            if gap.get("flagged")
        ]
        notes = list((evaluation.details or {}).get("notes") or [])
        return format_html(
            "<p>Evaluation {} ({}) · {} · {} · mean AUROC {} over {} evaluable finding(s); intervals: "
            "{}, {} rounds by {}; not evaluable below {} positives or negatives.</p>"
            "<table><tr><th>finding</th><th>AUROC (95 % CI)</th><th>positives</th><th>negatives</th></tr>"
            "{}</table><p>Subgroup gaps larger than their intervals: {}</p>"
            "<p>Out-of-distribution threshold: {}</p><p>{}</p>"
            '<p><a href="{}">Drift of this version in use</a> · <a href="{}">JSON with outputs</a></p>',
            evaluation.pk,
            evaluation.get_kind_display(),
            evaluation.evaluation_set,
            evaluation.created_at.strftime("%Y-%m-%d %H:%M UTC"),
            mean,
            (evaluation.details or {}).get("settings", {})
            and sum(bool(e.get("evaluable")) for e in (evaluation.per_class or {}).values()),
            settings_used.get("interval", "-"),
            settings_used.get("bootstrap_rounds", "-"),
            settings_used.get("resampling", "-"),
            settings_used.get("min_positives", "-"),
            rows,
            "; ".join(gaps) or "none",
            "-" if evaluation.ood_threshold is None else f"{evaluation.ood_threshold:.2f}",
            " ".join(notes),
            reverse("drift"),
            reverse("api-evaluation-detail", args=[evaluation.pk]),
        )

    @admin.display(description="ROC curves")
    def roc_curves(self, obj):
        evaluation = (obj.evaluation_in_force() or obj.evaluations.first()) if obj.pk else None
        if evaluation is None:
            return "-"
        url = reverse("admin:registry_modelversion_roc", args=[evaluation.pk])
        return format_html('<img src="{}" alt="ROC curves of {}" width="760">', url, obj.version_name)

    @admin.display(description="calibration")
    def calibration_summary(self, obj):
        evaluation = (obj.evaluation_in_force() or obj.evaluations.first()) if obj.pk else None
        calibration = obj.calibration or {}
        fitted = sorted(n for n, e in (calibration.get("per_class") or {}).items() if "a" in e)
        served = (
            f"Served calibrated ({calibration.get('method')}, fitted on {calibration.get('fitted_on')}) for: "
            f"{', '.join(fitted)}; the other findings are served as scores."
            if fitted
            else "Served uncalibrated: the API calls its outputs scores, not probabilities."
        )
        if evaluation is None:
            return served
        url = reverse("admin:registry_modelversion_reliability", args=[evaluation.pk])
        return format_html(
            '<p>{}</p><img src="{}" alt="Reliability diagrams of {}" width="760">',
            served,
            url,
            obj.version_name,
        )

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
                "evaluations/<int:pk>/reliability.png",
                self.admin_site.admin_view(self.reliability_view),
                name="registry_modelversion_reliability",
            ),
            path(
                "shadow/", self.admin_site.admin_view(self.shadow_view), name="registry_modelversion_shadow"
            ),
        ]
        return custom + super().get_urls()

    def roc_view(self, request, pk):
        from learning.plots import roc_png

        if not self.has_view_permission(request):
            raise PermissionDenied
        evaluation = get_object_or_404(Evaluation.objects.defer("ood_reference"), pk=pk)
        return HttpResponse(roc_png(evaluation), content_type="image/png")

    def reliability_view(self, request, pk):
        from learning.plots import reliability_png

        if not self.has_view_permission(request):
            raise PermissionDenied
        evaluation = get_object_or_404(Evaluation.objects.defer("ood_reference"), pk=pk)
        return HttpResponse(reliability_png(evaluation), content_type="image/png")

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
    list_display = ("version", "evaluation_set", "kind", "n_images", "mean_with_interval", "created_at")
    list_filter = ("kind",)
    readonly_fields = (
        "version",
        "evaluation_set",
        "kind",
        "set_sha256",
        "n_images",
        "per_class",
        "mean_auroc",
        "mean_auroc_low",
        "mean_auroc_high",
        "ood_threshold",
        "details",
        "created_at",
    )
    exclude = ("outputs", "ood_reference")

    def get_queryset(self, request):
        return super().get_queryset(request).defer("outputs", "ood_reference")

    @admin.display(description="mean AUROC (95 % CI)", ordering="mean_auroc")
    def mean_with_interval(self, obj):
        if obj.mean_auroc is None:
            return "not evaluable"
        ci = obj.mean_auroc_ci
        return f"{obj.mean_auroc:.3f}" + (f" ({ci[0]:.3f}-{ci[1]:.3f})" if ci else "")

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False


admin.site.unregister(ModelVersion)


@admin.register(ModelVersion)
class ModelVersionAdmin(EvaluationAdminMixin, RegistryModelVersionAdmin):
    change_fields = RegistryModelVersionAdmin.change_fields + EVALUATION_FIELDS
