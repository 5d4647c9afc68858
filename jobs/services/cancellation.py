"""job_request_terminate: the API/UI side of terminate."""

from __future__ import annotations

from django.db import transaction
from django.utils import timezone

from backends.base import JobState
from jobs.models import Job
from jobs.services.lifecycle import job_observe


def job_request_terminate(*, job: Job, source: str = "api", requested_by: str = "") -> Job:
    """Ask for a job to stop. Idempotent: a finished job is returned unchanged. A job not yet
    launched is aborted at once (its launch task will find it no longer queued); otherwise the
    worker stops the workload after commit and records the outcome."""
    if job.is_terminal:
        return job
    if job.state == JobState.QUEUED and not job.handle:
        job, _ = job_observe(job_pk=job.pk, state=JobState.ABORTED, source=source,
                             message=f"terminated before launch{_by(requested_by)}")
        return job
    from jobs.tasks import job_terminate_task

    Job.objects.filter(pk=job.pk, terminate_requested_at__isnull=True).update(terminate_requested_at=timezone.now())
    job_pk = job.pk
    transaction.on_commit(lambda: job_terminate_task.delay(job_pk))
    job, _ = job_observe(job_pk=job.pk, state=job.state, source=source, note_only=True,
                         message=f"termination requested{_by(requested_by)}")
    return job


def _by(who: str) -> str:
    return f" by {who}" if who else ""
