"""Server-rendered pages. Thin: authorise, read through selectors, write through one service call.

Access: a site the user is not a member of does not exist for them (404); a member whose role is
too low gets 403. Reads need "viewer", launch/terminate "operator", configuration "admin".
"""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.http import HttpResponse, JsonResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from backends.base import BackendError, Handle, InvalidJobSpec
from jobs import forms, selectors
from jobs.api.serializers import JobSerializer
from jobs.models import ApiToken, Job, State
from jobs.services import catalog, study_files
from jobs.services.cancellation import job_request_terminate
from jobs.services.probe import site_probe
from jobs.services.sites import site_backend
from jobs.services.study_preview import study_data_preview
from jobs.services.submission import job_submit
from jobs.services.tokens import token_create, token_revoke
from jobs.templatetags.launcher_ui import RETURN_CODES

PAGE_SIZE = 50
SECTIONS = {"overview": "site-overview", "launch": "job-launch", "studies": "studies", "settings": "site-settings",
            "history": "site-history", "tokens": "site-tokens"}


def _site(request, name: str, role: str = "viewer"):
    site = get_object_or_404(selectors.sites_visible_to(request.user), name=name)
    if not selectors.user_may(request.user, site, role):
        raise PermissionDenied(f"You need the {role} role on {site.name} for this page.")
    request.session["site"] = site.name
    return site


def _job(request, pk: int, role: str = "viewer") -> Job:
    job = get_object_or_404(selectors.jobs_visible_to(request.user), pk=pk)
    if not selectors.user_may(request.user, job.site, role):
        raise PermissionDenied(f"You need the {role} role on {job.site.name} for this.")
    return job


def _page(request, template: str, context: dict, *, site=None, section: str = "", status: int = 200):
    if site is not None:
        context.setdefault("role", selectors.site_role(request.user, site))
    context.update(site=site, section=section)
    return render(request, template, context, status=status)


def _int(value) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------------------------
# Overview and site switching
# ---------------------------------------------------------------------------------------------


@login_required
def home(request):
    sites = selectors.sites_visible_to(request.user)
    site = sites.filter(name=request.session.get("site", "")).first() or sites.first()
    if site is None:
        return _page(request, "jobs/no_sites.html", {})
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
    site = _site(request, site)
    filters = {"state": request.GET.get("state", ""), "study": request.GET.get("study", ""),
               "text": request.GET.get("q", "").strip()[:100]}
    if filters["state"] not in State.values:
        filters["state"] = ""
    seq = selectors.last_event_seq()  # before the rows: the websocket resumes from here, missing nothing
    page = selectors.site_jobs_page(site, **filters, before=_int(request.GET.get("before")),
                                    after=_int(request.GET.get("after")), limit=PAGE_SIZE)
    return _page(request, "jobs/overview.html", {
        "page": page, "filters": filters, "q": filters["text"], "counts": selectors.site_state_counts(site),
        "states": State.values, "studies": selectors.site_studies(site).values_list("name", flat=True),
        "seq": seq, "first_page": not request.GET.get("before") and not request.GET.get("after"),
    }, site=site, section="overview")


@login_required
@require_GET
def site_counts(request, site):
    site = _site(request, site)
    return JsonResponse({"counts": selectors.site_state_counts(site)})


# ---------------------------------------------------------------------------------------------
# One job
# ---------------------------------------------------------------------------------------------


@login_required
@require_GET
def job_detail(request, pk):
    job = _job(request, pk)
    seq = selectors.last_event_seq()
    logs = job.logs_tail
    if not job.is_terminal and job.handle:
        try:
            logs = site_backend(job.site).logs(Handle(**job.handle), tail=200)
        except BackendError as exc:
            logs = f"(logs unavailable: {exc})"
    return _page(request, "jobs/job_detail.html", {
        "job": job, "events": selectors.job_events_after(job), "seq": seq, "logs": logs,
        "spec": json.dumps(job.spec, indent=2, sort_keys=True) if job.spec else "",
        "may_terminate": selectors.user_may(request.user, job.site, "operator") and not job.is_terminal,
        "return_codes": RETURN_CODES,
    }, site=job.site, section="overview")


@login_required
@require_GET
def job_timeline(request, pk):
    """Events after ?after=<seq>, for the job page to append without a reload."""
    job = _job(request, pk)
    events = selectors.job_events_after(job, _int(request.GET.get("after")) or 0)[:200]
    return JsonResponse({"events": [
        {"seq": e.id, "at": e.at.isoformat(), "from": e.from_state, "to": e.to_state, "message": e.message,
         "source": e.source} for e in events
    ], "job": JobSerializer(job).data})


@login_required
@require_GET
def job_logs_download(request, pk):
    job = _job(request, pk)
    response = HttpResponse(job.logs_tail, content_type="text/plain; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{job.site.name}-{job.job_id}.log"'
    return response


@login_required
@require_http_methods(["GET", "POST"])
def job_terminate(request, pk):
    job = _job(request, pk, "operator")
    if request.method == "POST":
        job = job_request_terminate(job=job, source="admin", requested_by=request.user.get_username())
        messages.success(request, f"Termination of {job.job_id} requested.")
        return redirect("job-detail", pk=job.pk)
    return _page(request, "jobs/job_terminate.html", {"job": job}, site=job.site, section="overview")


@login_required
@require_http_methods(["GET", "POST"])
def job_launch(request, site):
    site = _site(request, site, "operator")
    sites = [s for s in selectors.sites_visible_to(request.user) if selectors.user_may(request.user, s, "operator")]
    studies = selectors.site_studies(site)
    form = forms.LaunchForm(request.POST or None, sites=sites, studies=studies, initial={"site": site.name})
    if request.method == "POST" and form.is_valid():
        target = _site(request, form.cleaned_data["site"], "operator")
        try:
            job, _ = job_submit(site=target, **form.submission(target), submitted_by=request.user, source="admin")
        except InvalidJobSpec as exc:
            form.add_error(_launch_field(form, exc.field), exc.reason)
        else:
            return redirect("job-detail", pk=job.pk)
    return _page(request, "jobs/launch.html", {"form": form}, site=site, section="launch")


def _launch_field(form, name: str) -> str | None:
    if name.endswith(".image") and name.startswith("job_meta.launcher_spec"):
        return "image"
    mapping = forms.LaunchForm.FIELD_MAP
    if name in mapping:
        return mapping[name]
    prefixes = [p for p in mapping if p.endswith(".") and name.startswith(p)]
    return mapping[max(prefixes, key=len)] if prefixes else None


# ---------------------------------------------------------------------------------------------
# Site settings, connection check, test launch
# ---------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def site_settings(request, site):
    site = _site(request, site, "admin")
    form = forms.SiteSettingsForm(request.POST or None, site=site)
    if request.method == "POST" and form.is_valid():
        try:
            with transaction.atomic():
                site = catalog.site_update(site=site, **form.changes())
        except ValidationError as exc:
            site.refresh_from_db()
            forms.errors_to_form(form, forms.validation_errors(exc), form.field_map())
        else:
            messages.success(request, "Site settings saved.")
            return redirect("site-settings", site=site.name)
    return _settings_page(request, site, form)


def _settings_page(request, site, form, **extra):
    studies = selectors.site_studies(site)
    probe_form = extra.pop("probe_form", None) or forms.ProbeForm(studies=studies)
    return _page(request, "jobs/site_settings.html", {"form": form, "probe_form": probe_form, **extra},
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
            site = catalog.site_create(**changes)
        except ValidationError as exc:
            forms.errors_to_form(form, forms.validation_errors(exc), form.field_map())
        else:
            return redirect("site-settings", site=site.name)
    return _page(request, "jobs/site_create.html", {"form": form})


@login_required
@require_POST
def site_check(request, site):
    site = _site(request, site, "admin")
    try:
        checks = site_backend(site).check_connection()
    except BackendError as exc:
        checks = None
        messages.error(request, f"Could not check the connection: {exc}")
    return _settings_page(request, site, forms.SiteSettingsForm(site=site), checks=checks)


@login_required
@require_POST
def site_probe_run(request, site):
    site = _site(request, site, "admin")
    probe_form = forms.ProbeForm(request.POST, studies=selectors.site_studies(site))
    result = None
    if probe_form.is_valid():
        try:
            result = site_probe(site=site, study=probe_form.cleaned_data["study"], image=probe_form.cleaned_data["image"],
                                requested_by=request.user)
        except InvalidJobSpec as exc:
            probe_form.add_error("image" if "image" in exc.field or "launcher_spec" in exc.field else None,
                                 f"{exc.field}: {exc.reason}")
    return _settings_page(request, site, forms.SiteSettingsForm(site=site), probe=result, probe_form=probe_form)


# ---------------------------------------------------------------------------------------------
# Studies and datasets
# ---------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def studies(request, site):
    site = _site(request, site)
    form = forms.StudyForm(request.POST or None, backend=site.backend)
    if request.method == "POST":
        site = _site(request, site.name, "admin")
        if form.is_valid():
            try:
                study = catalog.study_create(site=site, **form.cleaned_data)
            except ValidationError as exc:
                forms.errors_to_form(form, forms.validation_errors(exc))
            else:
                messages.success(request, f"Study {study.name} added.")
                return redirect("study-detail", site=site.name, study=study.name)
    return _page(request, "jobs/studies.html", {"studies": selectors.site_studies(site), "form": form},
                 site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_detail(request, site, study):
    site = _site(request, site)
    study = get_object_or_404(selectors.site_studies(site), name=study)
    study_form = forms.StudyForm(initial={f: getattr(study, f) for f in forms.StudyForm.base_fields}, backend=site.backend)
    dataset_form = forms.DatasetForm()
    if request.method == "POST":
        _site(request, site.name, "admin")
        if request.POST.get("action") == "dataset":
            dataset_form = forms.DatasetForm(request.POST)
            if dataset_form.is_valid():
                try:
                    catalog.dataset_create(study=study, **dataset_form.cleaned_data)
                except ValidationError as exc:
                    forms.errors_to_form(dataset_form, forms.validation_errors(exc))
                else:
                    messages.success(request, f"Dataset {dataset_form.cleaned_data['name']} added.")
                    return redirect("study-detail", site=site.name, study=study.name)
        else:
            study_form = forms.StudyForm(request.POST, backend=site.backend)
            if study_form.is_valid():
                try:
                    study = catalog.study_update(study=study, **study_form.cleaned_data)
                except ValidationError as exc:
                    study.refresh_from_db()
                    forms.errors_to_form(study_form, forms.validation_errors(exc))
                else:
                    messages.success(request, "Study saved.")
                    return redirect("study-detail", site=site.name, study=study.name)
    return _page(request, "jobs/study_detail.html", {"study": study, "study_form": study_form,
                                                      "dataset_form": dataset_form}, site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_delete(request, site, study):
    site = _site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    if request.method == "POST":
        catalog.study_delete(study=study)
        messages.success(request, f"Study {study.name} deleted.")
        return redirect("studies", site=site.name)
    return _page(request, "jobs/confirm.html", {
        "title": f"Delete study {study.name}?", "body": f"Its {study.datasets.count()} dataset(s) are removed too.",
        "cancel": reverse("study-detail", args=[site.name, study.name]), "button": "Delete study"},
        site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def dataset_edit(request, site, study, dataset):
    site = _site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    dataset = get_object_or_404(study.datasets.all(), name=dataset)
    form = forms.DatasetForm(request.POST or None, initial={"name": dataset.name, "source": dataset.source,
                                                            "mode": dataset.mode})
    if request.method == "POST" and form.is_valid():
        try:
            catalog.dataset_update(dataset=dataset, **form.cleaned_data)
        except ValidationError as exc:
            forms.errors_to_form(form, forms.validation_errors(exc))
        else:
            messages.success(request, "Dataset saved.")
            return redirect("study-detail", site=site.name, study=study.name)
    return _page(request, "jobs/dataset_edit.html", {"study": study, "dataset": dataset, "form": form},
                 site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def dataset_delete(request, site, study, dataset):
    site = _site(request, site, "admin")
    study = get_object_or_404(selectors.site_studies(site), name=study)
    dataset = get_object_or_404(study.datasets.all(), name=dataset)
    if request.method == "POST":
        catalog.dataset_delete(dataset=dataset)
        messages.success(request, f"Dataset {dataset.name} deleted.")
        return redirect("study-detail", site=site.name, study=study.name)
    return _page(request, "jobs/confirm.html", {
        "title": f"Delete dataset {study.name}/{dataset.name}?", "body": "Jobs launched later no longer mount it.",
        "cancel": reverse("study-detail", args=[site.name, study.name]), "button": "Delete dataset"},
        site=site, section="studies")


@login_required
@require_http_methods(["GET", "POST"])
def study_data_import(request, site):
    site = _site(request, site, "admin")
    form = forms.StudyDataImportForm(request.POST or None, request.FILES or None)
    preview = None
    if request.method == "POST" and form.is_valid():
        text = form.cleaned_data["text"]
        try:
            if request.POST.get("action") == "apply":
                study_files.study_data_replace(site, text)
                messages.success(request, "study_data.yaml imported.")
                return redirect("studies", site=site.name)
            preview = study_data_preview(site=site, text=text)
        except study_files.StudyFileError as exc:
            form.add_error("text", str(exc))
        except ValidationError as exc:
            for key, errors in forms.validation_errors(exc).items():
                for error in errors:
                    form.add_error("text", f"{key}: {error}")
        form = forms.StudyDataImportForm(initial={"text": text}) if preview else form
    return _page(request, "jobs/study_import.html", {"form": form, "preview": preview}, site=site, section="studies")


@login_required
@require_GET
def study_data_export(request, site):
    site = _site(request, site)
    response = HttpResponse(study_files.study_data_dump(site), content_type="application/yaml; charset=utf-8")
    response["Content-Disposition"] = f'attachment; filename="{site.name}-study_data.yaml"'
    return response


# ---------------------------------------------------------------------------------------------
# API tokens
# ---------------------------------------------------------------------------------------------


@login_required
@require_http_methods(["GET", "POST"])
def user_tokens(request):
    form = forms.TokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        _, secret = token_create(user=request.user, name=form.cleaned_data["name"], created_by=request.user)
        form = forms.TokenForm()
    return _page(request, "jobs/tokens.html", {"form": form, "secret": secret,
                                               "tokens": selectors.tokens_of(user=request.user)}, section="tokens")


@login_required
@require_http_methods(["GET", "POST"])
def site_tokens(request, site):
    site = _site(request, site, "admin")
    form = forms.TokenForm(request.POST or None)
    secret = None
    if request.method == "POST" and form.is_valid():
        _, secret = token_create(site=site, name=form.cleaned_data["name"], created_by=request.user)
        form = forms.TokenForm()
    return _page(request, "jobs/tokens.html", {"form": form, "secret": secret,
                                               "tokens": selectors.tokens_of(site=site)}, site=site, section="tokens")


@login_required
@require_POST
def token_revoke_view(request, pk):
    token = get_object_or_404(ApiToken.objects.select_related("site", "user"), pk=pk)
    if token.user_id is not None:
        if token.user_id != request.user.pk:
            raise PermissionDenied("Not your token.")
        target = reverse("user-tokens")
    else:
        _site(request, token.site.name, "admin")
        target = reverse("site-tokens", args=[token.site.name])
    token_revoke(token=token)
    messages.success(request, f"Token {token.prefix}… revoked.")
    return redirect(target)


# ---------------------------------------------------------------------------------------------
# History
# ---------------------------------------------------------------------------------------------

CHART_W, CHART_H, BAR_GAP = 640, 180, 4
DURATION_BUCKETS = ["< 10 s", "10 s – 1 min", "1–10 min", "10 min – 1 h", "1–6 h", "≥ 6 h"]


@login_required
@require_GET
def site_history(request, site):
    from datetime import timedelta

    from django.utils import timezone

    from jobs.models import TERMINAL

    site = _site(request, site)
    days = min(max(_int(request.GET.get("days")) or 14, 1), 90)
    history = selectors.site_history(site, days=days)
    today = timezone.now().date()
    day_list = [today - timedelta(days=i) for i in range(days - 1, -1, -1)]
    by_day = {d: {s: 0 for s in TERMINAL} for d in day_list}
    for row in history["per_day"]:
        if row["day"] in by_day:
            by_day[row["day"]][row["state"]] = row["n"]
    top = max([sum(v.values()) for v in by_day.values()] + [1])
    width = (CHART_W - 40) / len(day_list)
    bars = []
    for i, day in enumerate(day_list):
        y = CHART_H
        segments = []
        for state in TERMINAL:
            n = by_day[day][state]
            if n:
                h = n / top * (CHART_H - 20)
                y -= h
                segments.append({"state": state, "n": n, "y": round(y, 1), "h": round(h, 1)})
        bars.append({"day": day, "x": round(40 + i * width, 1), "w": round(max(width - BAR_GAP, 1), 1),
                     "segments": segments, "total": sum(by_day[day].values()),
                     "label": i % max(1, len(day_list) // 7) == 0})
    counts = [history["durations"].get(i, 0) for i in range(len(DURATION_BUCKETS))]
    dtop = max(counts + [1])
    dw = (CHART_W - 40) / len(counts)
    duration_bars = [{"label": label, "n": n, "x": round(40 + i * dw, 1), "w": round(dw - 8, 1),
                      "h": round(n / dtop * (CHART_H - 20), 1), "y": round(CHART_H - n / dtop * (CHART_H - 20), 1),
                      "tx": round(40 + i * dw + (dw - 8) / 2, 1)}
                     for i, (label, n) in enumerate(zip(DURATION_BUCKETS, counts))]
    return _page(request, "jobs/history.html", {
        "days": days, "bars": bars, "top": top, "states": TERMINAL, "duration_bars": duration_bars, "dtop": dtop,
        "chart_w": CHART_W, "chart_h": CHART_H, "chart_h_label": CHART_H + 16,
        "totals": {s: sum(by_day[d][s] for d in day_list) for s in TERMINAL},
    }, site=site, section="history")
