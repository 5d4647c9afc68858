"""Celery tasks: interfaces that take ids, call one service, and retry only what can succeed later.

Enqueued after commit only (jobs.services.submission, jobs.services.cancellation). acks_late and
reject_on_worker_lost are safe because launch and terminate are idempotent and re-check the job
first: a redelivered launch finds the job no longer queued, or the backend adopts the workload it
already created under the job's deterministic name. Retries happen only for BackendError with
retryable=True (daemon unreachable, API 5xx), with capped exponential backoff; a permanent error is
recorded on the job by the service.
"""

import logging

from celery import shared_task

from backends.base import BackendError

log = logging.getLogger(__name__)
MAX_RETRIES = 8
BACKOFF_START, BACKOFF_CAP = 2, 60  # seconds; must stay below LAUNCHER_TASK_VISIBILITY_SECONDS
ROBUST = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": MAX_RETRIES}


def _countdown(retries: int) -> int:
    return min(BACKOFF_CAP, BACKOFF_START * 2 ** retries)


@shared_task(**ROBUST)
def job_launch_task(self, job_pk: int, sealed_credentials: str) -> None:
    """`sealed_credentials`: jobs.services.sealing.credentials_seal() of the job's credential args."""
    from backends.base import JobState
    from jobs.services.launching import job_launch
    from jobs.services.lifecycle import job_observe, verdict
    from jobs.services.sealing import SealBroken, credentials_unseal

    try:
        credentials = credentials_unseal(sealed_credentials)
    except SealBroken as exc:
        job_observe(job_pk, verdict(JobState.LAUNCH_FAILED, reason="CredentialsUnreadable", message=str(exc)),
                    source="worker")
        return
    try:
        job_launch(job_pk=job_pk, credentials=credentials)
    except BackendError as exc:  # job_launch lets only retryable errors out
        if self.request.retries >= self.max_retries:
            job_observe(job_pk, verdict(JobState.LAUNCH_FAILED, reason="BackendUnavailable",
                                        message=f"gave up after {self.request.retries} retries: {exc}"), source="worker")
            return
        raise self.retry(exc=exc, countdown=_countdown(self.request.retries))


@shared_task(**ROBUST)
def job_terminate_task(self, job_pk: int) -> None:
    from jobs.services.launching import job_terminate

    try:
        job_terminate(job_pk=job_pk)
    except BackendError as exc:
        if exc.retryable and self.request.retries < self.max_retries:
            raise self.retry(exc=exc, countdown=_countdown(self.request.retries))
        log.warning("terminate of job %s failed for good: %s; reconcile keeps checking it", job_pk, exc)
        raise


@shared_task(acks_late=True)
def sites_reconcile_task() -> int:
    """Celery beat, every LAUNCHER_RECONCILE_SECONDS, and once when a worker starts."""
    from jobs.services.reconciliation import sites_reconcile

    return sum(len(r.changed) for r in sites_reconcile())


@shared_task
def jobs_prune_task() -> int:
    """Celery beat, hourly: drop events and logs tails of jobs finished LAUNCHER_RETENTION_DAYS ago."""
    from jobs.services.retention import jobs_prune

    return jobs_prune().jobs
