from django.contrib import admin

from pacs.models import ReceivedInstance, ResultObject


class ResultObjectInline(admin.TabularInline):
    model = ResultObject
    extra = 0
    can_delete = False
    readonly_fields = [f.name for f in ResultObject._meta.fields]


@admin.register(ReceivedInstance)
class ReceivedInstanceAdmin(admin.ModelAdmin):
    list_display = ["id", "received_at", "source", "modality", "state", "top_finding", "prediction"]
    list_filter = ["state", "source", "modality"]
    readonly_fields = [f.name for f in ReceivedInstance._meta.fields]
    inlines = [ResultObjectInline]
