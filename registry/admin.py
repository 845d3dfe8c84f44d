"""Django admin for the registry: model-admins register, activate and roll back versions here.
Every write goes through registry.services, like the commands and the REST API."""

import json

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied, ValidationError
from django.db.models import ProtectedError
from django.http import FileResponse, Http404, HttpResponse, HttpResponseRedirect
from django.shortcuts import get_object_or_404
from django.template.response import TemplateResponse
from django.urls import path, reverse
from django.utils.html import format_html, format_html_join
from django.views.decorators.http import require_POST

from engine.architectures import ARCHITECTURES
from engine.preprocessing import preprocessing_complete, preprocessing_describe
from engine.weights import SOURCES, is_safetensors
from registry.models import DEFAULT_CLASS_NAMES, PUBLISHED_AUROC_LABEL, ActivationEvent, ModelVersion
from registry.services import (
    ActivationError,
    RegistrationError,
    model_version_activate,
    model_version_register,
    model_version_rollback,
    model_version_rollback_target,
)
from registry.storage import weights_storage

ACTIVATE_PERMISSION = "registry.activate_modelversion"
DOWNLOAD_PERMISSION = "registry.change_modelversion"
UNTRAINED_LABEL = "UNTRAINED: outputs carry no medical meaning"


# The admin says whose it is (Django's default is "Django administration").
admin.site.site_header = "lungsite registry"
admin.site.site_title = "lungsite registry"
admin.site.index_title = "Model versions, activation and audit"


def _untrained_badge(*, short: bool = False) -> str:
    # One line, never wrapped into a block: the short form in the list, the full sentence on a
    # version's page (and as the short form's tooltip).
    return format_html(
        '<strong class="untrained-badge" title="{}" style="color:#fff;background:#ba2121;padding:2px 6px;'
        'border-radius:3px;white-space:nowrap">{}</strong>',
        UNTRAINED_LABEL,
        "UNTRAINED" if short else UNTRAINED_LABEL,
    )


def _auroc(value) -> str:
    return "-" if value is None else f"{value:.3f}"


def _per_class_entry(value) -> dict:
    """A per_class_auroc value as a dict: older rows store the AUROC alone, evaluations may store
    {"auroc", "positives", "negatives", "set", "evaluated_at"}."""
    return dict(value) if isinstance(value, dict) else {"auroc": value}


def _parse_json_object(text: str, what: str) -> dict | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{what} is not valid JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ValidationError(f"{what} must be a JSON object.")
    return value


class ModelVersionAddForm(forms.ModelForm):
    """Upload + metadata; clean() hands everything to model_version_register, whose refusal becomes
    the form's error, so the admin registers exactly as the command does."""

    weights = forms.FileField(
        help_text="A state_dict or checkpoint (.pt/.pth) or a .safetensors file of the declared "
        "architecture; TorchXRayVision state dicts as saved from xrv.models.DenseNet/ResNet. Saving "
        "checks the weights and exports their serving graph: it takes about 10 s (up to a minute on a "
        "busy server); submit once and wait."
    )
    class_names_text = forms.CharField(
        label="Class names",
        required=False,
        widget=forms.Textarea(attrs={"rows": 13, "cols": 40}),
        help_text="In the order of the model's outputs: one per line or comma separated. Empty: the 13 "
        f"findings ({', '.join(DEFAULT_CLASS_NAMES)}), or TorchXRayVision's 18 labels for its weights.",
    )
    architecture = forms.ChoiceField(choices=[(a, a) for a in ARCHITECTURES], initial="densenet121")
    source = forms.ChoiceField(
        label="Weights source",
        required=False,
        choices=[(s, s) for s in SOURCES],
        initial="auto",
        help_text="auto: TorchXRayVision's layout when the file holds op_threshs, torchvision's otherwise.",
    )
    extra_outputs = forms.ChoiceField(
        label="TorchXRayVision outputs beyond lungsite's findings",
        required=False,
        choices=[("keep", "keep them as extra outputs"), ("drop", "drop them")],
        initial="keep",
        help_text="Hernia, Lung Lesion, Fracture, Lung Opacity, Enlarged Cardiomediastinum. Outputs the "
        "weights were not trained for (no label, NaN op_threshs) are always dropped.",
    )
    auroc = forms.FloatField(
        label="Mean AUROC",
        required=False,
        min_value=0.0,
        max_value=1.0,
        help_text="Measured elsewhere (optional).",
    )
    published_auroc_json = forms.CharField(
        label="Published AUROC (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text='Optional, per finding as published with the weights, e.g. {"Effusion": 0.87}. Shown as '
        f'"{PUBLISHED_AUROC_LABEL}"; never counts as an evaluation.',
    )
    published_auroc_source = forms.CharField(
        label="Published AUROC source",
        required=False,
        max_length=500,
        help_text="Where those figures were published (paper, model card, page). Required with them.",
    )
    thresholds_json = forms.CharField(
        label="Thresholds (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text='Optional, e.g. {"Effusion": 0.42}. Classes not named use 0.5 (TorchXRayVision '
        "weights: their op_threshs).",
    )
    preprocessing_json = forms.CharField(
        label="Preprocessing (JSON)",
        required=False,
        widget=forms.Textarea(attrs={"rows": 3, "cols": 60}),
        help_text='Optional; a profile ({"profile": "imagenet"} or "torchxrayvision") and/or keys '
        "input_size, channels (1 or 3), value_range, crop (none, center), resize (bilinear, skimage), "
        "mean, std. Default: the weights' own (ImageNet's 224 px; TorchXRayVision's for its weights).",
    )

    class Meta:
        model = ModelVersion
        fields = ["version_name", "architecture", "untrained", "notes"]

    request_user = None  # set by ModelVersionAdmin.get_form

    def clean_thresholds_json(self):
        return _parse_json_object(self.cleaned_data.get("thresholds_json"), "Thresholds")

    def clean_preprocessing_json(self):
        return _parse_json_object(self.cleaned_data.get("preprocessing_json"), "Preprocessing")

    def clean_published_auroc_json(self):
        return _parse_json_object(self.cleaned_data.get("published_auroc_json"), "Published AUROC")

    def clean(self):
        cleaned = super().clean()
        if self.errors:
            return cleaned
        text = cleaned.get("class_names_text") or ""
        names = [n.strip() for line in text.splitlines() for n in line.split(",") if n.strip()]
        try:
            self.instance = model_version_register(
                file=cleaned["weights"],
                version_name=cleaned["version_name"],
                class_names=names or None,
                architecture=cleaned["architecture"],
                source=cleaned.get("source") or "auto",
                extra_outputs=cleaned.get("extra_outputs") or "keep",
                preprocessing=cleaned.get("preprocessing_json"),
                thresholds=cleaned.get("thresholds_json"),
                auroc=cleaned.get("auroc"),
                published_auroc=cleaned.get("published_auroc_json"),
                published_auroc_source=cleaned.get("published_auroc_source", ""),
                notes=cleaned.get("notes", ""),
                untrained=cleaned.get("untrained", False),
                user=self.request_user,
            )
        except RegistrationError as exc:
            lines = str(exc).split("\n")
            if len(lines) > 1:  # e.g. the two lines that turn a whole pickled model into a state dict
                raise ValidationError(format_html("{}<pre>{}</pre>", lines[0], "\n".join(lines[1:]))) from exc
            raise ValidationError(str(exc)) from exc
        return cleaned

    def _post_clean(self):
        # The register service validated and wrote the row; the model-level checks have nothing to add.
        pass


@admin.register(ModelVersion)
class ModelVersionAdmin(admin.ModelAdmin):
    """The registry's view of a version. learning.admin re-registers it with the evaluation, training
    and shadow blocks and actions (that app sits above this one)."""

    list_display = (
        "version_name",
        "is_active",
        "untrained_flag",
        "mean_auroc",
        "short_sha",
        "created",
        "activated",
    )
    list_display_links = ("version_name",)
    list_filter = ("is_active", "untrained", "architecture")
    search_fields = ("version_name", "sha256", "notes")
    ordering = ("-created_at", "-id")
    actions = ["activate_selected"]
    change_fields = (
        "untrained_warning",
        "version_name",
        "is_active",
        "activated_at",
        "architecture",
        "precision_text",
        "sha256",
        "serving_graph_sha256",
        "storage_path",
        "weights_download",
        "class_names_list",
        "mean_auroc",
        "per_class_table",
        "thresholds_table",
        "published_auroc_table",
        "preprocessing_text",
        "weights_source_text",
        "created_at",
        "created_by",
        "activation_history",
        "notes",
    )
    add_fieldsets = (
        (None, {"fields": ("weights", "version_name", "class_names_text", "architecture")}),
        (
            "Optional",
            {
                "fields": (
                    "source",
                    "extra_outputs",
                    "auroc",
                    "published_auroc_json",
                    "published_auroc_source",
                    "thresholds_json",
                    "preprocessing_json",
                    "untrained",
                    "notes",
                )
            },
        ),
    )

    # ---- list columns and read-only blocks ----

    @admin.display(description="mean AUROC", ordering="accuracy_auroc")
    def mean_auroc(self, obj):
        return _auroc(obj.accuracy_auroc)

    @admin.display(description="created", ordering="created_at")
    def created(self, obj):
        return f"{obj.created_at:%Y-%m-%d %H:%M}"

    @admin.display(description="activated", ordering="activated_at")
    def activated(self, obj):
        return f"{obj.activated_at:%Y-%m-%d %H:%M}" if obj.activated_at else "-"

    @admin.display(description="sha256")
    def short_sha(self, obj):
        return format_html('<code title="{}">{}</code>', obj.sha256, obj.short_sha256)

    @admin.display(description="trained?", ordering="untrained")
    def untrained_flag(self, obj):
        return _untrained_badge(short=True) if obj.untrained else "trained"

    @admin.display(description="weights")
    def untrained_warning(self, obj):
        return _untrained_badge() if obj.untrained else "Trained weights."

    @admin.display(description="serving precision")
    def precision_text(self, obj):
        if obj.precision == "int8":
            from registry.quantization import precision_statement

            return precision_statement((obj.model_card or {}).get("serving_precision"))
        return "FP32 (the exported graph, as trained)."

    @admin.display(description="class names (output order)")
    def class_names_list(self, obj):
        return ", ".join(obj.class_names or [])

    @admin.display(description="per-class AUROC")
    def per_class_table(self, obj):
        entries = {name: _per_class_entry(v) for name, v in (obj.per_class_auroc or {}).items()}
        if not any(entry.get("auroc") is not None for entry in entries.values()):
            return "Not evaluated (run manage.py evaluate_model)."

        def count(entry, key):
            return "-" if entry.get(key) is None else str(entry[key])

        rows = []
        for name in obj.class_names or []:
            entry = entries.get(name, {})
            rows.append(
                (name, _auroc(entry.get("auroc")), count(entry, "positives"), count(entry, "negatives"))
            )
        table = self._table(("finding", "AUROC", "positives", "negatives"), rows)
        # Where and when it was measured, as far as the row records it.
        evaluated_on = getattr(obj, "evaluation_set", None) or next(
            (e["set"] for e in entries.values() if e.get("set")), None
        )
        evaluated_at = getattr(obj, "evaluated_at", None) or next(
            (e["evaluated_at"] for e in entries.values() if e.get("evaluated_at")), None
        )
        source = format_html(
            "<p>Set: {}. Date: {}. A dash: not recorded for this version.</p>",
            evaluated_on or "not recorded",
            evaluated_at
            if isinstance(evaluated_at, str)
            else (f"{evaluated_at:%Y-%m-%d}" if evaluated_at else "not recorded"),
        )
        return format_html("{}{}", table, source)

    @admin.display(description="thresholds")
    def thresholds_table(self, obj):
        rows = [(name, f"{obj.threshold_for(name):.3f}") for name in obj.class_names or []]
        return self._table(("finding", "threshold (default 0.5)"), rows)

    @admin.display(description=f"published AUROC ({PUBLISHED_AUROC_LABEL})")
    def published_auroc_table(self, obj):
        published = obj.published_auroc or {}
        if not published.get("per_class"):
            return "None recorded."
        rows = [(name, _auroc(value)) for name, value in published["per_class"].items()]
        table = self._table(("finding", "published AUROC"), rows)
        return format_html(
            "<p><strong>{}</strong>: figures published with the weights, not measured on this "
            "installation's data. They are not an evaluation: the version counts as not evaluated "
            "until evaluate_model measures it.</p>{}<p>Source: {}</p>",
            PUBLISHED_AUROC_LABEL.capitalize(),
            table,
            published.get("source", "not recorded"),
        )

    @admin.display(description="preprocessing")
    def preprocessing_text(self, obj):
        spec = preprocessing_complete(obj.preprocessing)
        return format_html("<p>{}</p><pre>{}</pre>", preprocessing_describe(spec), json.dumps(spec, indent=1))

    @admin.display(description="weights source")
    def weights_source_text(self, obj):
        source = obj.weights_source or {}
        if not source:
            return "torchvision layout (as registered)."
        lines = [f"Format: {source.get('format', 'torchvision')}."]
        if source.get("file_sha256"):
            lines.append(
                f"Converted at registration from the file with sha256 {source['file_sha256']} "
                "(the stored weights are the served outputs only, without op_threshs)."
            )
        lines += source.get("report", [])
        return format_html_join("", "<p>{}</p>", ((line,) for line in lines))

    @admin.display(description="weights file")
    def weights_download(self, obj):
        # Only in the fieldsets of users holding DOWNLOAD_PERMISSION (see _change_fields).
        url = reverse("admin:registry_modelversion_weights", args=[obj.pk])
        return format_html('<a href="{}">Download</a> ({})', url, obj.storage_path)

    @admin.display(description="activation history")
    def activation_history(self, obj):
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
                e.why() or "-",
            )
            for e in events
        ]
        return self._table(("active from", "to", "by", "via", "reason"), rows)

    @staticmethod
    def _table(header, rows):
        head = format_html_join("", "<th>{}</th>", ((h,) for h in header))
        body = format_html_join("", "<tr>" + "<td>{}</td>" * len(header) + "</tr>", rows)
        return format_html("<table><thead><tr>{}</tr></thead><tbody>{}</tbody></table>", head, body)

    # ---- forms ----

    def get_form(self, request, obj=None, change=False, **kwargs):
        if obj is None:
            kwargs["form"] = ModelVersionAddForm
            form = super().get_form(request, obj, change=change, **kwargs)
            # modelform_factory made a new class for this request: the user rides on it.
            form.request_user = request.user
            return form
        return super().get_form(request, obj, change=change, **kwargs)

    def get_fieldsets(self, request, obj=None):
        if obj is None:
            return self.add_fieldsets
        return ((None, {"fields": self._change_fields(request)}),)

    def get_readonly_fields(self, request, obj=None):
        if obj is None:
            return ()
        # Weights and their metadata are immutable once registered; only the notes can change.
        return tuple(f for f in self._change_fields(request) if f != "notes")

    def _change_fields(self, request):
        if request.user.has_perm(DOWNLOAD_PERMISSION):
            return self.change_fields
        return tuple(f for f in self.change_fields if f != "weights_download")

    def save_model(self, request, obj, form, change):
        if change:
            obj.save(update_fields=["notes"])
        # On add, ModelVersionAddForm.clean() already registered the row through the service.
        else:
            self.message_user(
                request,
                f"Checked the weights of {obj.version_name} ({obj.architecture}: layer shapes and finite "
                "values), exported its serving graph and checked its outputs on a test image.",
                messages.INFO,
            )

    # ---- delete: a version that was ever active stays ----

    def has_delete_permission(self, request, obj=None):
        if obj is not None and obj.was_ever_active():
            return False
        return super().has_delete_permission(request, obj)

    def delete_model(self, request, obj):
        try:
            obj.delete()
        except ProtectedError as exc:
            self.message_user(request, exc.args[0], messages.ERROR)

    def delete_queryset(self, request, queryset):
        kept = [v.version_name for v in queryset if v.was_ever_active()]
        if kept:
            self.message_user(
                request,
                f"Not deleted: {', '.join(kept)} (active once; kept for the audit trail).",
                messages.ERROR,
            )
        for version in queryset:
            if not version.was_ever_active():
                version.delete()

    # ---- activation ----

    def has_activate_permission(self, request):
        return request.user.has_perm(ACTIVATE_PERMISSION)

    @admin.action(permissions=["activate"], description="Activate the selected version")
    def activate_selected(self, request, queryset):
        if queryset.count() != 1:
            self.message_user(request, "Select exactly one version to activate.", messages.ERROR)
            return None
        version = queryset.get()
        if request.POST.get("confirm") != "yes":
            # As delete_selected does: a page that says what will change, then the same POST again.
            hidden = {"action": "activate_selected", "_selected_action": version.pk}
            return self._activate_confirmation(request, version, action_url="", hidden=hidden)
        self._activate(request, version)
        return None

    def activate_view(self, request, pk):
        """A version's own Activate button: GET asks for confirmation, POST activates."""
        if not self.has_activate_permission(request):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=pk)
        if request.method == "POST" and request.POST.get("confirm") == "yes":
            self._activate(request, version)
            return HttpResponseRedirect(reverse("admin:registry_modelversion_change", args=[pk]))
        action_url = reverse("admin:registry_modelversion_activate", args=[pk])
        return self._activate_confirmation(request, version, action_url=action_url, hidden={})

    def _activate_confirmation(self, request, version, *, action_url, hidden):
        context = {
            **self.admin_site.each_context(request),
            "title": f"Activate {version.version_name}?",
            "opts": self.model._meta,
            "version": version,
            "current": ModelVersion.objects.filter(is_active=True).first(),
            "action_url": action_url,
            "hidden": hidden,
            "cancel_url": reverse("admin:registry_modelversion_change", args=[version.pk]),
        }
        return TemplateResponse(request, "admin/registry/modelversion/activate_confirmation.html", context)

    def _activate(self, request, version) -> None:
        try:
            model_version_activate(version=version, user=request.user, via=ActivationEvent.VIA_ADMIN)
        except ActivationError as exc:
            self.message_user(request, str(exc), messages.ERROR)
            return
        note = " It is UNTRAINED: its outputs carry no medical meaning." if version.untrained else ""
        self.message_user(
            request, f"{version.version_name} is now the active version.{note}", messages.SUCCESS
        )

    def change_view(self, request, object_id, form_url="", extra_context=None):
        extra_context = dict(extra_context or {})
        extra_context["can_activate"] = self.has_activate_permission(request)
        return super().change_view(request, object_id, form_url, extra_context=extra_context)

    def get_urls(self):
        custom = [
            path(
                "rollback/",
                self.admin_site.admin_view(require_POST(self.rollback_view)),
                name="registry_modelversion_rollback",
            ),
            path(
                "<int:pk>/activate/",
                self.admin_site.admin_view(self.activate_view),
                name="registry_modelversion_activate",
            ),
            path(
                "<int:pk>/weights/",
                self.admin_site.admin_view(self.weights_view),
                name="registry_modelversion_weights",
            ),
        ]
        return custom + super().get_urls()

    def rollback_view(self, request):
        if not self.has_activate_permission(request):
            raise PermissionDenied
        try:
            version = model_version_rollback(user=request.user, via=ActivationEvent.VIA_ADMIN)
        except ActivationError as exc:
            self.message_user(request, str(exc), messages.ERROR)
        else:
            self.message_user(
                request, f"Rolled back: {version.version_name} is active again.", messages.SUCCESS
            )
        return HttpResponseRedirect(reverse("admin:registry_modelversion_changelist"))

    def weights_view(self, request, pk):
        if not request.user.has_perm(DOWNLOAD_PERMISSION):
            raise PermissionDenied
        version = get_object_or_404(ModelVersion, pk=pk)
        try:
            handle = weights_storage().open(version.storage_path, "rb")
        except FileNotFoundError as exc:
            raise Http404(f"The weights of {version.version_name} are missing from storage.") from exc
        except Exception as exc:  # noqa: BLE001 - any backend failure means "storage unavailable"
            return HttpResponse(
                f"The weights store is unavailable ({type(exc).__name__}); try again later.",
                status=503,
                content_type="text/plain",
            )
        suffix = "pt"
        if getattr(handle, "seekable", lambda: False)():  # the file's format names the download
            suffix = "safetensors" if is_safetensors(handle.read(16)) else "pt"
            handle.seek(0)
        filename = f"{version.version_name}-{version.short_sha256}.{suffix}"
        response = FileResponse(
            handle, as_attachment=True, filename=filename, content_type="application/octet-stream"
        )
        response["X-Weights-SHA256"] = version.sha256
        return response

    def changelist_view(self, request, extra_context=None):
        extra_context = dict(extra_context or {})
        if self.has_activate_permission(request):
            try:
                extra_context["rollback_target"] = model_version_rollback_target()
            except ActivationError as exc:
                extra_context["rollback_unavailable"] = str(exc)
            extra_context["can_activate"] = True
        return super().changelist_view(request, extra_context=extra_context)


@admin.register(ActivationEvent)
class ActivationEventAdmin(admin.ModelAdmin):
    """The activation history, read-only: which version served from when to when, by whom."""

    list_display = (
        "version",
        "activated_at",
        "until",
        "activated_by",
        "via",
        "previous",
        "reason_given",
    )
    list_filter = ("via",)
    list_select_related = ("version", "previous", "activated_by")
    search_fields = ("version__version_name",)

    def get_queryset(self, request):
        return super().get_queryset(request).with_deactivated_at()

    @admin.display(description="active until")
    def until(self, obj):
        return obj.deactivated_at or "still active"

    @admin.display(description="reason")
    def reason_given(self, obj):
        return obj.why() or "-"

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False
