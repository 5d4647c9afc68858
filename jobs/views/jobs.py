"""Overview, site switching and the job pages: detail, timeline, logs, launch and terminate."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils.http import urlencode
from django.views.decorators.http import require_GET, require_http_methods

from backends.base import BackendError, InvalidJobSpec
from backends.logtail import cap_tail
from jobs import forms, selectors
from jobs.models import Job, State
from jobs.payloads import job_payload
from jobs.services import job_logs
from jobs.services.audit import audit_request
from jobs.services.cancellation import job_request_terminate
from jobs.services.probe import probe_report
from jobs.services.submission import job_submit
from jobs.templatetags.launcher_ui import RETURN_CODES
from jobs.views import job_list
from jobs.views.common import get_job, get_site, parse_int, render_page

PAGE_SIZE = job_list.PAGE_SIZE
SECTIONS = {"overview": "site-overview", "launch": "job-launch", "studies": "studies", "settings": "site-settings",
            "history": "site-history", "tokens": "site-tokens"}


# ---------------------------------------------------------------------------------------------
# Overview and site switching
# ---------------------------------------------------------------------------------------------

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
@require_http_methods(["GET", "POST"])
def site_overview(request, site):
    site = get_site(request, site)
    if request.method == "POST":
        return _terminate_selected(request, site)
    if request.GET.get("row"):  # one row, for the live table to fill in a job it saw appear
        job = get_object_or_404(Job.objects.select_related("site", "submitted_by", "submitted_by_token"),
                                site=site, pk=parse_int(request.GET["row"]) or 0)
        return render(request, "jobs/includes/job_row.html", {
            "job": job, "selectable": selectors.user_may(request.user, site, "operator")})
    seq = selectors.last_event_seq()  # before the rows: the websocket resumes from here, missing nothing
    page = job_list.site_job_list(site, request.GET)
    filters = page["filters"]
    query = {k: v for k, v in filters.items() if v}
    return render_page(request, "jobs/overview.html", {
        "page": page, "filters": filters, "q": filters["q"], "errors": page["errors"], "sort": page["sort"],
        "columns": _sort_columns(query, page["sort"]), "query": urlencode(query),
        "sort_query": urlencode({**query, "sort": page["sort"]}),
        "counts": selectors.site_state_counts(site), "states": State.values,
        "studies": selectors.site_studies(site).values_list("name", flat=True),
        "seq": seq, "first_page": page["first_page"],
        "selectable": selectors.user_may(request.user, site, "operator"),
    }, site=site, section="overview")


SORT_LABELS = {"name": "Job", "state": "State", "created": "Created (UTC)", "duration": "Duration"}


def _sort_columns(query: dict, sort: str) -> dict:
    """Per sortable column: the link that sorts by it (again: the other way) and its aria-sort."""
    columns = {}
    for key, label in SORT_LABELS.items():
        current = sort.lstrip("-") == key
        descending = sort.startswith("-")
        first = "-" if key in ("created", "duration") else ""  # newest and longest first
        target = (key if descending else f"-{key}") if current else f"{first}{key}"
        columns[key] = {"label": label, "href": "?" + urlencode({**query, "sort": target}),
                        "aria": ("descending" if descending else "ascending") if current else None}
    return columns


def _terminate_selected(request, site):
    """Terminate the selected jobs: a confirmation page listing them first, then one service call
    per job (idempotent; jobs already over are left as they are)."""
    site = get_site(request, site.name, "operator")
    ids = [i for i in (parse_int(v) for v in request.POST.getlist("job")[:PAGE_SIZE]) if i]
    jobs = list(Job.objects.select_related("site").filter(site=site, pk__in=ids).order_by("-id"))
    back = request.POST.get("back", "")
    back = back if back.startswith("?") and back.isprintable() and len(back) < 1000 else ""  # our own query
    cancel = reverse("site-overview", kwargs={"site": site.name}) + back
    running = [job for job in jobs if not job.is_terminal]
    if not running:
        messages.error(request, "Select at least one job that has not ended.")
        return redirect(cancel)
    if request.POST.get("confirm") != "1":
        return render_page(request, "jobs/job_terminate_selected.html", {
            "jobs": running, "cancel": cancel, "back": back}, site=site, section="overview")
    for job in running:
        job = job_request_terminate(job=job, source="admin", requested_by=request.user.get_username())
        audit_request(request, "job.terminate", f"job:{job.pk}", {"site": site.name, "job_id": job.job_id}, site=site)
    messages.success(request, f"Termination of {len(running)} job(s) requested.")
    return redirect(cancel)


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
            logs = cap_tail(job_logs.job_live_tail(job, 200))
        except BackendError as exc:
            logs = f"(logs unavailable: {exc})"
    return render_page(request, "jobs/job_detail.html", {
        "job": job, "events": selectors.job_events_after(job), "seq": seq, "logs": logs,
        "spec": json.dumps(job.spec, indent=2, sort_keys=True) if job.spec else "",
        "may_terminate": selectors.user_may(request.user, job.site, "operator") and not job.is_terminal,
        "return_codes": RETURN_CODES, "probe": probe_report(job),
        **_usage_and_relaunch(request.user, job),
    }, site=job.site, section="overview")


def _usage_and_relaunch(user, job) -> dict:
    from jobs.services.usage import usage_text
    from jobs.views.relaunch import relaunch_context

    return {"usage_text": usage_text(job.usage), **relaunch_context(user, job)}


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
        except BackendError as exc:  # the host checks could not run (no worker answered): nothing recorded
            form.add_error(None, f"Not launched: {exc}")
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
