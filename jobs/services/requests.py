"""The launch request as stored on the job: built once, at submit, kept in the form the launch
task needs, and turned back into a JobRequest at launch.

Kept out of the row: the credentials (they travel sealed through the broker, jobs.services.sealing)
and the study's runtime (datasets, image, env): NVFlare re-reads the study on every launch, so the
launch task reads it again from the site's studies. The row's own identity (site, pk) is not
repeated either.
"""

from __future__ import annotations

from typing import Any

from backends import nvflare
from backends.base import JobRequest
from jobs.models import Job
from jobs.services.sites import study_runtime

CREDENTIAL_ARGS = (*nvflare.CREDENTIAL_ENV, *nvflare.WORKSPACE_TRANSFER_ENV)


def request_to_store(request: JobRequest) -> dict[str, Any]:
    """The JSON kept in Job.request: everything a launch needs but the credentials and study data."""
    return {
        "job_id": request.job_id,
        "role": request.role,
        "job_meta": dict(request.job_meta),
        "job_args": {name: list(pair) if isinstance(pair, (list, tuple)) else pair
                     for name, pair in request.job_args.items() if name not in CREDENTIAL_ARGS},
        "set_options": list(request.set_options),
        "study": request.study.name if request.study else (request.job_meta.get("study") or ""),
        "byoc": request.byoc,
        "command": list(request.command) if request.command is not None else None,
    }


def request_to_launch(job: Job, *, credentials: dict[str, Any] | None = None) -> JobRequest:
    """The request to prepare and launch: the stored one, with `credentials` (the launch task's)
    and the study's runtime as configured now."""
    stored = job.request if job.request is not None else _recorded_before_requests(job)
    command = stored.get("command")
    return JobRequest(
        site=job.site.name,
        job_pk=str(job.pk),
        job_id=stored["job_id"],
        role=stored["role"],
        job_meta=stored["job_meta"],
        job_args={**{k: v for k, v in stored["job_args"].items() if k not in CREDENTIAL_ARGS}, **(credentials or {})},
        set_options=tuple(stored["set_options"] or ()),
        study=study_runtime(job.site, stored["study"]),
        byoc=bool(stored["byoc"]),
        command=tuple(command) if command is not None else None,
    )


def _recorded_before_requests(job: Job) -> dict[str, Any]:
    """A job recorded before requests were stored (migration 0006) or written by hand: its
    recorded fields are its request (what the launch task read before)."""
    return {
        "job_id": job.job_id, "role": job.role, "job_meta": job.job_meta, "job_args": dict(job.job_args),
        "set_options": list(job.set_options or ()), "study": job.study,
        "byoc": bool(job.job_meta.get("byoc")),  # kept only when the FL parent itself submitted
        "command": None,
    }
