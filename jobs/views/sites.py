"""Site pages: creation, settings, the connection check and the test launch (probe)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.shortcuts import redirect
from django.views.decorators.http import require_http_methods, require_POST

from backends.base import BackendError, InvalidJobSpec
from jobs import forms, selectors
from jobs.services import catalog, policy
from jobs.services.audit import audit_request
from jobs.services.connection_check import site_check_connection
from jobs.services.probe import site_probe
from jobs.views.common import get_site, render_page


@login_required
@require_http_methods(["GET", "POST"])
def site_settings(request, site):
    site = get_site(request, site, "admin")
    form = forms.SiteSettingsForm(request.POST or None, site=site, staff=request.user.is_staff)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                site = catalog.site_update(site=site, actor=request.user, **form.changes())
                audit_request(request, "site.update", f"site:{site.name}", {
                    "changes": form.changes(), "was": request.resolver_match.kwargs.get("site")}, site=site)
        except ValidationError as exc:
            site.refresh_from_db()
            if isinstance(exc, policy.StaffOnly):
                form.add_error(None, exc.detail)
            forms.errors_to_form(form, forms.validation_errors(exc), form.field_map())
        else:
            messages.success(request, "Site settings saved.")
            return redirect("site-settings", site=site.name)
    return _settings_page(request, site, form)


def _settings_page(request, site, form, **extra):
    studies = selectors.site_studies(site)
    probe_form = extra.pop("probe_form", None) or forms.ProbeForm(studies=studies)
    return render_page(request, "jobs/site_settings.html", {"form": form, "probe_form": probe_form, **extra},
                       site=site, section="settings")


@login_required
@require_http_methods(["GET", "POST"])
def site_create(request):
    if not request.user.is_staff:
        raise PermissionDenied("Only staff create sites.")
    form = forms.SiteSettingsForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        changes = form.changes()
        try:
            with transaction.atomic():
                site = catalog.site_create(**changes)
                audit_request(request, "site.create", f"site:{site.name}", {"changes": changes}, site=site)
        except ValidationError as exc:
            forms.errors_to_form(form, forms.validation_errors(exc), form.field_map())
        else:
            return redirect("site-settings", site=site.name)
    return render_page(request, "jobs/site_create.html", {"form": form})


@login_required
@require_POST
def site_check(request, site):
    site = get_site(request, site, "admin")
    try:
        checks = site_check_connection(site)  # bounded by LAUNCHER_CHECK_DEADLINE_SECONDS, 2 at once
    except BackendError as exc:
        checks = None
        messages.error(request, f"Could not check the connection: {str(exc)[:200]}")
    return _settings_page(request, site, forms.SiteSettingsForm(site=site, staff=request.user.is_staff), checks=checks)


@login_required
@require_POST
def site_probe_run(request, site):
    site = get_site(request, site, "admin")
    probe_form = forms.ProbeForm(request.POST, studies=selectors.site_studies(site))
    if probe_form.is_valid():
        study, image = probe_form.cleaned_data["study"], probe_form.cleaned_data["image"]
        try:
            # An ordinary submit, launched by the launch task: its page is the job's page, which
            # shows what it saw once it has ended.
            job = site_probe(site=site, study=study, image=image, requested_by=request.user,
                             on_created=lambda job: audit_request(request, "site.probe", f"site:{site.name}", {
                                 "study": study, "image": image, "job": job.pk}, site=site))
        except InvalidJobSpec as exc:
            probe_form.add_error("image" if "image" in exc.field or "launcher_spec" in exc.field else None,
                                 f"{exc.field}: {exc.reason}")
        else:
            return redirect("job-detail", pk=job.pk)
    return _settings_page(request, site, forms.SiteSettingsForm(site=site, staff=request.user.is_staff),
                          probe_form=probe_form)
