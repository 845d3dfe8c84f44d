from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from audit.models import Prediction


@admin.register(Prediction)
class PredictionAdmin(admin.ModelAdmin):
    """The prediction log, read-only: the log is append-only, so the admin can neither add, change
    nor delete. Only auditors and superusers (audit.view_all_predictions) see it."""

    list_display = ("id", "created_at", "user", "model", "source", "latency_ms", "result_link")
    list_filter = ("source", "model")
    search_fields = ("image_sha256", "user__username")
    date_hierarchy = "created_at"
    list_select_related = ("user", "model")
    readonly_fields = [field.name for field in Prediction._meta.fields] + ["result_link"]

    @admin.display(description="result page")
    def result_link(self, obj: Prediction) -> str:
        return format_html('<a href="{}">open</a>', reverse("prediction-detail", args=[obj.pk]))

    def has_view_permission(self, request, obj=None) -> bool:
        return request.user.has_perm("audit.view_all_predictions")

    def has_module_permission(self, request) -> bool:
        return self.has_view_permission(request)

    def has_add_permission(self, request) -> bool:
        return False

    def has_change_permission(self, request, obj=None) -> bool:
        return False

    def has_delete_permission(self, request, obj=None) -> bool:
        return False
