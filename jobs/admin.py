"""Django admin: configuration is editable here; job state is read-only (it changes only through
jobs.services.lifecycle.job_observe)."""

from django.contrib import admin

from jobs.models import ApiToken, AuditEntry, Dataset, Job, JobEvent, OrphanWorkload, Site, SiteMembership, Study


class MembershipInline(admin.TabularInline):
    model = SiteMembership
    extra = 0


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    list_display = ("name", "backend", "updated_at")
    search_fields = ("name",)
    inlines = [MembershipInline]


class DatasetInline(admin.TabularInline):
    model = Dataset
    extra = 0


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    list_display = ("name", "site", "image")
    list_filter = ("site",)
    search_fields = ("name",)
    inlines = [DatasetInline]


class JobEventInline(admin.TabularInline):
    model = JobEvent
    extra = 0
    can_delete = False
    readonly_fields = ("id", "at", "from_state", "to_state", "source", "message")

    def has_add_permission(self, request, obj=None):
        return False


@admin.register(Job)
class JobAdmin(admin.ModelAdmin):
    list_display = ("job_id", "site", "state", "return_code", "study", "created_at")
    list_filter = ("state", "site", "backend")
    search_fields = ("job_id", "study", "image")
    inlines = [JobEventInline]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in Job._meta.fields]

    def has_add_permission(self, request):
        return False  # jobs come from the API or the dashboard, which validate and launch them


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    list_display = ("prefix", "name", "site", "user", "created_at", "last_used_at", "revoked_at")
    readonly_fields = ("prefix", "key_hash", "created_at", "last_used_at")

    def has_add_permission(self, request):
        return False  # the secret must be shown once: use `manage.py api_token` or the dashboard


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    list_display = ("at", "actor", "action", "target", "remote_addr")
    search_fields = ("actor", "action", "target")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in AuditEntry._meta.fields]


admin.site.register(OrphanWorkload)
