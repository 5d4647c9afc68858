"""Overview, site switching and the job pages: detail, timeline, logs, launch and terminate."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect
from django.views.decorators.http import require_GET, require_http_methods

from backends.base import BackendError, Handle, InvalidJobSpec
from backends.logtail import cap_tail
from jobs import forms, selectors
from jobs.models import State
from jobs.payloads import job_payload
from jobs.services.audit import audit_request
from jobs.services.cancellation import job_request_terminate
from jobs.services.probe import probe_report
from jobs.services.sites import site_backend
from jobs.services.submission import job_submit
from jobs.templatetags.launcher_ui import RETURN_CODES
from jobs.views.common import get_job, get_site, parse_int, render_page

PAGE_SIZE = 50
SECTIONS = {"overview": "site-overview", "launch": "job-launch", "studies": "studies", "settings": "site-settings",
            "history": "site-history", "tokens": "site-tokens"}


# ---------------------------------------------------------------------------------------------
# Overview and site switching
# ---------------------------------------------------------------------------------------------


@login_required
def home(request):
    sites = selectors.sites_visible_to(request.user)
    site = sites.filter(name=request.session.get("site", "")).first() or sites.first()
    if site is None:
        return render_page(request, "jobs/no_sites.html", {})
    return redirect("site-overview", site=site.name)


@login_required
@require_GET
def site_switch(request):
    site = get_object_or_404(selectors.sites_visible_to(request.user), name=request.GET.get("site", ""))
    section = request.GET.get("section", "overview")
    target = SECTIONS.get(section, "site-overview")
    if section in ("settings", "tokens") and not selectors.user_may(request.user, site, "admin") \
            or section == "launch" and not selectors.user_may(request.user, site, "operator"):
        target = "site-overview"
    return redirect(target, site=site.name)


@login_required
@require_GET
def site_overview(request, site):
    site = get_site(request, site)
    filters = {"state": request.GET.get("state", ""), "study": request.GET.get("study", ""),
               "text": request.GET.get("q", "").strip()[:100]}
    if filters["state"] not in State.values:
        filters["state"] = ""
    seq = selectors.last_event_seq()  # before the rows: the websocket resumes from here, missing nothing
    page = selectors.site_jobs_page(site, **filters, before=parse_int(request.GET.get("before")),
                                    after=parse_int(request.GET.get("after")), limit=PAGE_SIZE)
    return render_page(request, "jobs/overview.html", {
        "page": page, "filters": filters, "q": filters["text"], "counts": selectors.site_state_counts(site),
        "states": State.values, "studies": selectors.site_studies(site).values_list("name", flat=True),
        "seq": seq, "first_page": not request.GET.get("before") and not request.GET.get("after"),
    }, site=site, section="overview")


@login_required
@require_GET
def site_counts(request, site):
    site = get_site(request, site)
    return JsonResponse({"counts": selectors.site_state_counts(site)})


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


@login_required
@require_GET
def job_detail(request, pk):
    job = get_job(request, pk)
    seq = selectors.last_event_seq()
    logs = cap_tail(job.logs_tail)
    if not job.is_terminal and job.handle:
        try:
            logs = cap_tail(site_backend(job.site).logs(Handle(**job.handle), tail=200))
        except BackendError as exc:
            logs = f"(logs unavailable: {exc})"
    return render_page(request, "jobs/job_detail.html", {
        "job": job, "events": selectors.job_events_after(job), "seq": seq, "logs": logs,
        "spec": json.dumps(job.spec, indent=2, sort_keys=True) if job.spec else "",
        "may_terminate": selectors.user_may(request.user, job.site, "operator") and not job.is_terminal,
        "return_codes": RETURN_CODES, "probe": probe_report(job),
    }, site=job.site, section="overview")


@login_required
@require_GET
def job_timeline(request, pk):
    """Events after ?after=<seq>, for the job page to append without a reload."""
    job = get_job(request, pk)
    events = selectors.job_events_after(job, parse_int(request.GET.get("after")) or 0)[:200]
    return JsonResponse({"events": [
        {"seq": e.id, "at": e.at.isoformat(), "from": e.from_state, "to": e.to_state, "message": e.message,
         "source": e.source} for e in events
    ], "job": job_payload(job)})


@login_required
@require_GET
def job_logs_download(request, pk):
    job = get_job(request, pk)
    response = HttpResponse(cap_tail(job.logs_tail), content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{job.site.name}-{job.job_id}.log"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
def job_terminate(request, pk):
    job = get_job(request, pk, "operator")
    if request.method == "POST":
        was_terminal = job.is_terminal
        job = job_request_terminate(job=job, source="admin", requested_by=request.user.get_username())
        if not was_terminal:
            audit_request(request, "job.terminate", f"job:{job.pk}", {"site": job.site.name, "job_id": job.job_id},
                          site=job.site)
        messages.success(request, f"Termination of {job.job_id} requested.")
        return redirect("job-detail", pk=job.pk)
    return render_page(request, "jobs/job_terminate.html", {"job": job}, site=job.site, section="overview")


@login_required
@require_http_methods(["GET", "POST"])
def job_launch(request, site):
    site = get_site(request, site, "operator")
    sites = [s for s in selectors.sites_visible_to(request.user) if selectors.user_may(request.user, s, "operator")]
    studies = selectors.site_studies(site)
    form = forms.LaunchForm(request.POST or None, sites=sites, studies=studies, initial={"site": site.name})
    if request.method == "POST" and form.is_valid():
        target = get_site(request, form.cleaned_data["site"], "operator")
        try:
            job, _ = job_submit(site=target, **form.submission(target), submitted_by=request.user, source="admin",
                                on_created=lambda job: audit_request(request, "job.launch", f"job:{job.pk}", {
                                    "site": target.name, "job_id": job.job_id, "study": job.study, "role": job.role},
                                    site=target))
        except InvalidJobSpec as exc:
            form.add_error(_launch_field(form, exc.field), exc.reason)
        else:
            return redirect("job-detail", pk=job.pk)
    return render_page(request, "jobs/launch.html", {"form": form}, site=site, section="launch")


def _launch_field(form, name: str) -> str | None:
    if name.endswith(".image") and name.startswith("job_meta.launcher_spec"):
        return "image"
    mapping = forms.LaunchForm.FIELD_MAP
    if name in mapping:
        return mapping[name]
    prefixes = [p for p in mapping if p.endswith(".") and name.startswith(p)]
    return mapping[max(prefixes, key=len)] if prefixes else None
