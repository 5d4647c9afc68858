"""Celery tasks: interfaces that take ids, call one service, and retry only what can succeed later.

acks_late (settings) is safe because launch and terminate are idempotent: a redelivered launch finds
the job no longer queued, or the backend adopts the workload it already created.
"""

from celery import shared_task

from backends.base import BackendError

RETRY = {"max_retries": 8, "countdown": 2}


@shared_task(bind=True)
def job_launch_task(self, job_pk: int, credentials: dict) -> None:
    from jobs.services.launching import job_launch

    try:
        job_launch(job_pk=job_pk, credentials=credentials)
    except BackendError as exc:  # only retryable errors reach here (daemon down, API 5xx)
        if self.request.retries >= RETRY["max_retries"]:
            from backends.base import JobState
            from jobs.services.lifecycle import job_observe

            job_observe(job_pk=job_pk, state=JobState.LAUNCH_FAILED, source="worker", reason="BackendUnavailable",
                        message=f"gave up after {self.request.retries} retries: {exc}")
            return
        raise self.retry(exc=exc, countdown=min(60, RETRY["countdown"] * 2 ** self.request.retries))


@shared_task(bind=True)
def job_terminate_task(self, job_pk: int) -> None:
    from jobs.services.launching import job_terminate

    try:
        job_terminate(job_pk=job_pk)
    except BackendError as exc:
        if exc.retryable and self.request.retries < RETRY["max_retries"]:
            raise self.retry(exc=exc, countdown=min(60, RETRY["countdown"] * 2 ** self.request.retries))
        raise


@shared_task
def sites_reconcile_task() -> int:
    from jobs.services.reconciliation import sites_reconcile

    return sum(len(r.changed) for r in sites_reconcile())
