"""Django admin: configuration is editable here; job state is read-only (jobs are written only by
jobs.services.lifecycle: job_create, job_observe, job_note)."""

from django import forms
from django.contrib import admin
from django.core.exceptions import ValidationError

from backends.base import BackendError
from jobs.models import ApiToken, AuditEntry, Dataset, Job, JobEvent, OrphanWorkload, Site, SiteMembership, Study


class MembershipInline(admin.TabularInline):
    model = SiteMembership
    extra = 0


def _add_catalog_errors(form: forms.ModelForm, exc: ValidationError) -> None:
    """Catalog errors are keyed by field or dotted setting (docker.network): put each on its field."""
    for key, messages in exc.message_dict.items():
        field = key.split(".", 1)[0]
        for message in messages:
            form.add_error(field if field in form.fields else None, f"{key}: {message}" if field != key else message)


class SiteAdminForm(forms.ModelForm):
    """Validated by the catalog, like the API and the dashboard: an invalid config is never saved."""

    class Meta:
        model = Site
        fields = "__all__"

    def clean(self):
        from jobs.services import catalog

        data = super().clean()
        if self._errors:
            return data
        site = Site(pk=self.instance.pk, **{f: data.get(f) for f in ("name", "backend")},
                    **{f: data.get(f) or {} for f in ("docker", "kubernetes", "process")},
                    allowed_data_roots=data.get("allowed_data_roots") or [])
        site._state.adding = self.instance._state.adding  # uniqueness checks skip the row being edited
        try:
            catalog.site_clean(site)
        except ValidationError as exc:
            _add_catalog_errors(self, exc)
        else:
            data.update(docker=site.docker, kubernetes=site.kubernetes, process=site.process,
                        allowed_data_roots=site.allowed_data_roots)
        return data


@admin.register(Site)
class SiteAdmin(admin.ModelAdmin):
    form = SiteAdminForm
    list_display = ("name", "backend", "updated_at")
    search_fields = ("name",)
    inlines = [MembershipInline]


class DatasetAdminForm(forms.ModelForm):
    class Meta:
        model = Dataset
        fields = "__all__"

    def clean(self):
        from jobs.services import catalog

        data = super().clean()
        try:  # an inline form's instance carries its (maybe unsaved) study, whose site the study form set
            site = self.instance.study.site
        except (Dataset.study.RelatedObjectDoesNotExist, Study.site.RelatedObjectDoesNotExist):
            site = None
        if not self._errors and site is not None and data.get("source"):
            try:  # where the site's data is (a worker with LAUNCHER_ENGINE_VIA_WORKER)
                message = catalog.dataset_sources_check(site, [data["source"]])[data["source"]]
            except BackendError as exc:
                message = f"Could not check this source: {exc}."
            if message:
                self.add_error("source", message)
        return data


class DatasetInline(admin.TabularInline):
    model = Dataset
    form = DatasetAdminForm
    extra = 0


class StudyAdminForm(forms.ModelForm):
    class Meta:
        model = Study
        fields = "__all__"

    def clean(self):
        from jobs.services import catalog

        data = super().clean()
        if self._errors or data.get("site") is None:
            return data
        study = Study(pk=self.instance.pk, **{f: data.get(f) for f in ("site", "name", "description", "image")},
                      env=data.get("env") or {}, docker_kwargs=data.get("docker_kwargs") or {},
                      pod_template=data.get("pod_template"))
        study._state.adding = self.instance._state.adding
        try:
            catalog.study_clean(study, exclude=["site"])
        except ValidationError as exc:
            _add_catalog_errors(self, exc)
        else:
            data["env"] = study.env
        return data


@admin.register(Study)
class StudyAdmin(admin.ModelAdmin):
    form = StudyAdminForm
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
    """Read-only apart from the audited "revoke" action: editing revoked_at here would un-revoke."""

    list_display = ("prefix", "name", "site", "user", "created_at", "last_used_at", "revoked_at")
    actions = ["revoke"]

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in ApiToken._meta.fields]

    def has_add_permission(self, request):
        return False  # the secret must be shown once: use `manage.py api_token` or the dashboard

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False  # revoke instead: the audit trail keeps pointing at the token

    @admin.action(description="Revoke the selected tokens", permissions=["view"])
    def revoke(self, request, queryset):
        from jobs.services.audit import audit_request
        from jobs.services.tokens import token_revoke

        for token in queryset.select_related("site").filter(revoked_at__isnull=True):
            token_revoke(token=token)
            audit_request(request, "token.revoke", (f"site:{token.site.name}/" if token.site_id else "")
                          + f"token:{token.prefix}", {"name": token.name, "via": "admin"}, site=token.site)


@admin.register(AuditEntry)
class AuditEntryAdmin(admin.ModelAdmin):
    """Read-only: an audit trail nobody can edit, add to or prune from the admin."""

    list_display = ("at", "actor", "action", "target", "site", "remote_addr")
    list_filter = ("action", "site")
    search_fields = ("actor", "action", "target")

    def get_readonly_fields(self, request, obj=None):
        return [f.name for f in AuditEntry._meta.fields]

    def has_add_permission(self, request):
        return False

    def has_change_permission(self, request, obj=None):
        return False

    def has_delete_permission(self, request, obj=None):
        return False


admin.site.register(OrphanWorkload)
