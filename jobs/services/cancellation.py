"""job_request_terminate: the API/UI side of terminate."""

from __future__ import annotations

from django.db import transaction

from backends.base import JobState
from jobs.models import Job
from jobs.services.lifecycle import job_note, job_observe, verdict


def job_request_terminate(*, job: Job, source: str = "api", requested_by: str = "") -> Job:
    """Ask for a job to stop. Idempotent: a finished job is returned unchanged. A job not yet
    launched is aborted at once (its launch task will find it no longer queued); otherwise the
    worker stops the workload after commit and records the outcome."""
    if job.is_terminal:
        return job
    if job.state == JobState.QUEUED and not job.handle:
        job, _ = job_observe(job, verdict(JobState.ABORTED, message=f"terminated before launch{_by(requested_by)}"),
                             source=source)
        return job
    from jobs.tasks import job_terminate_task

    job, _ = job_note(job, source=source, terminate_requested=True, message=f"termination requested{_by(requested_by)}")
    job_pk = job.pk
    transaction.on_commit(lambda: job_terminate_task.delay(job_pk))
    return job


def _by(who: str) -> str:
    return f" by {who}" if who else ""
