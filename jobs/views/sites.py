"""Site pages: creation, settings, the connection check and the test launch (probe)."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.shortcuts import redirect
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from backends.base import BackendError, InvalidJobSpec
from jobs import forms, selectors
from jobs.forms_checks import Incomplete, apply_form
from jobs.models import ACTIVE
from jobs.services import catalog, site_checks
from jobs.services.audit import audit_request
from jobs.services.connection_check import site_check_connection
from jobs.services.probe import site_probe
from jobs.views.common import get_site, render_page
from jobs.views.confirm import carried_fields, confirm_page, confirmed


@login_required
@require_http_methods(["GET", "POST"])
def site_settings(request, site):
    site = get_site(request, site, "admin")
    form = forms.SiteSettingsForm(request.POST or None, site=site, staff=request.user.is_staff)
    if request.method == "POST":
        was, before = site.name, site_checks.snapshot(site)
        found = _engine_findings(form, lambda: catalog.site_update(site=site, actor=request.user, save=False,
                                                                   **form.changes()), actor=request.user, before=before)

        def save():
            saved = catalog.site_update(site=site, actor=request.user, **form.changes())
            found.raise_errors()  # all, named; nothing written
            audit_request(request, "site.update", f"site:{saved.name}", {"changes": form.changes(), "was": was},
                          site=saved)
            return saved

        risks = _risks(site, form) if form.is_valid() else []
        done = apply_form(form, save, field_map=form.field_map(), commit=not risks or confirmed(request))
        if done is True:  # valid, but renames or switches the site: say what that does first
            site.refresh_from_db()
            return confirm_page(request, title=f"Change site {site.name}?", consequences=risks,
                                button="Save settings", cancel=reverse("site-settings", args=[site.name]),
                                action=reverse("site-settings", args=[site.name]), carry=carried_fields(request),
                                site=site, section="settings")
        if done:
            messages.success(request, "Site settings saved.")
            for warning in found.warnings:
                messages.warning(request, warning)
            return redirect("site-settings", site=done.name)
        site.refresh_from_db()  # the service changed the instance before refusing
    return _settings_page(request, site, form)


def _engine_findings(form, unsaved, **kwargs) -> site_checks.SiteFindings:
    """A save's engine checks, run BEFORE apply_form's transaction (on SQLite an open transaction
    holds the write lock while the engine answers) on the site `unsaved()` builds (the catalog,
    save=False). Nothing to judge when the catalog or the form refuse the values: the save's own
    call of the catalog then says why, as before."""
    form.is_valid()  # the values the save will get (apply_form's dry run too, when fields failed)
    try:
        site = unsaved()
    except (ValidationError, Incomplete):
        return site_checks.SiteFindings()
    return site_checks.save_findings(site, **kwargs)


def _risks(site, form) -> list[str]:
    """What a rename or a backend switch breaks, in words, with this site's numbers."""
    changes, risks = form.changes(), []
    total = site.jobs.count()
    active = site.jobs.filter(state__in=ACTIVE).count()
    if changes["backend"] != site.backend:
        risks.append(f"Site {site.name} has {total} job(s), {active} not finished; switching from {site.backend} "
                     f"to {changes['backend']}: new launches run on {changes['backend']} with its settings, and "
                     f"the jobs already started stay on {site.backend} (images, workspace and data roots must "
                     "exist there too).")
    if changes["name"] != site.name:
        risks.append(f"Renaming site {site.name} to {changes['name']} breaks its FL client: the launcher's `site` "
                     f"argument in the client's …__p_resources.json still says {site.name}, so its launches are "
                     f"refused until it says {changes['name']}. Its {total} job record(s) stay with the site under "
                     "its new name.")
    return risks


@login_required
@require_http_methods(["GET", "POST"])
def site_delete(request, site):
    site = get_site(request, site, "admin")
    if not request.user.is_staff:
        raise PermissionDenied("Only platform staff delete sites.")
    total, active = site.jobs.count(), site.jobs.filter(state__in=ACTIVE).count()
    if confirmed(request):
        try:
            with transaction.atomic():
                audit_request(request, "site.delete", f"site:{site.name}", {"jobs": total})
                catalog.site_delete(site=site, actor=request.user)
        except catalog.SiteBusy as exc:
            messages.error(request, f"Site {site.name} was not deleted: {exc}.")
            return redirect("site-settings", site=site.name)
        request.session.pop("site", None)
        messages.success(request, f"Site {site.name} deleted.")
        return redirect("overview")
    consequences = [f"Site {site.name} has {total} job(s); their records, its studies, datasets, members and "
                    "site tokens are deleted with it. Its FL client can no longer launch anything."]
    if active:
        consequences.append(f"{active} job(s) are not finished: deleting is refused until they are terminated.")
    return confirm_page(request, title=f"Delete site {site.name}?", consequences=consequences, button="Delete site",
                        cancel=reverse("site-settings", args=[site.name]), site=site, section="settings",
                        refused=request.method == "POST")


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
    if request.method == "POST":
        found = _engine_findings(form, lambda: catalog.site_create(actor=request.user, save=False, **form.changes()),
                                 actor=request.user)

        def create():
            changes = form.changes()
            created = catalog.site_create(actor=request.user, **changes)
            found.raise_errors()
            audit_request(request, "site.create", f"site:{created.name}", {"changes": changes}, site=created)
            return created

        site = apply_form(form, create, field_map=form.field_map())
        if site:
            for warning in found.warnings:
                messages.warning(request, warning)
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
        except BackendError as exc:  # the host checks could not run (no worker answered): nothing recorded
            probe_form.add_error(None, f"Not launched: {exc}")
        else:
            return redirect("job-detail", pk=job.pk)
    return _settings_page(request, site, forms.SiteSettingsForm(site=site, staff=request.user.is_staff),
                          probe_form=probe_form)
