"""Relaunch a finished job: the same spec under a new NVFlare job id (operators only, audited).

Only jobs launched from this dashboard: a job the FL server submitted carried credentials (auth
token, signature, ssid) that the launcher never stores, so its relaunch could not authenticate to
NVFlare; the page says why instead of offering the button.
"""

from __future__ import annotations

import uuid

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.shortcuts import redirect
from django.views.decorators.http import require_POST

from backends.base import BackendError, InvalidJobSpec
from jobs import selectors
from jobs.models import Job
from jobs.services.audit import audit_request
from jobs.services.probe import is_probe
from jobs.services.requests import CREDENTIAL_ARGS
from jobs.services.submission import job_submit
from jobs.views.common import get_job

FROM_FL_SERVER = ("launched by the FL server: its credentials (auth token, signature) were never stored, so a "
                  "relaunch could not authenticate to NVFlare; submit it again from the FL server")


def relaunch_refusal(job: Job) -> str:
    """Why `job` cannot be relaunched from the page; "" when it can."""
    if not job.is_terminal:
        return "the job has not finished"
    if is_probe(job):
        return "a test launch: run the probe again from the site's settings"
    if job.submitted_by_token_id is not None or job.submitted_by_id is None or \
            any(name in CREDENTIAL_ARGS for name in job.job_args or {}):
        return FROM_FL_SERVER
    return ""


def relaunch_context(user, job: Job) -> dict:
    """For the job page: whether to offer Relaunch, or why not (operators only see either)."""
    if not job.is_terminal or not selectors.user_may(user, job.site, "operator"):
        return {"may_relaunch": False, "relaunch_refusal": ""}
    refusal = relaunch_refusal(job)
    return {"may_relaunch": not refusal, "relaunch_refusal": refusal}


def relaunched_submission(job: Job, new_id: str) -> dict:
    """job_submit's arguments for `job` under `new_id`: the same meta, args and options."""
    meta = dict(job.job_meta or {})
    meta["job_id"] = new_id
    if meta.get("name") in (None, job.job_id):
        meta["name"] = new_id
    args = {name: list(value) if isinstance(value, list) else value for name, value in (job.job_args or {}).items()}
    if isinstance(args.get("job_id"), list) and args["job_id"]:
        args["job_id"] = [args["job_id"][0], new_id]
    return {"job_id": new_id, "role": job.role, "job_meta": meta, "job_args": args,
            "set_options": list(job.set_options or []) or None}


@login_required
@require_POST
def job_relaunch(request, pk):
    job = get_job(request, pk, "operator")
    refusal = relaunch_refusal(job)
    if refusal:
        messages.error(request, f"Cannot relaunch {job.job_id}: {refusal}.")
        return redirect("job-detail", pk=job.pk)
    new_id = str(uuid.uuid4())
    try:
        new, _ = job_submit(
            site=job.site, **relaunched_submission(job, new_id), submitted_by=request.user, source="admin",
            message=f"relaunch of {job.job_id} by {request.user.get_username()}",
            on_created=lambda created: audit_request(request, "job.relaunch", f"job:{created.pk}", {
                "site": job.site.name, "job_id": new_id, "relaunch_of": job.job_id, "study": created.study},
                site=job.site))
    except InvalidJobSpec as exc:  # the site's settings changed since: say what no longer passes
        messages.error(request, f"Cannot relaunch {job.job_id}: {exc.field}: {exc.reason}")
        return redirect("job-detail", pk=job.pk)
    except BackendError as exc:  # the host checks could not run (no worker answered): nothing recorded
        messages.error(request, f"Cannot relaunch {job.job_id} now: {exc}")
        return redirect("job-detail", pk=job.pk)
    messages.success(request, f"Relaunched {job.job_id} as {new_id}.")
    return redirect("job-detail", pk=new.pk)
