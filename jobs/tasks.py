"""Celery tasks: interfaces that take ids, call one service, and retry only what can succeed later.

Enqueued after commit only (jobs.services.submission, jobs.services.cancellation). acks_late and
reject_on_worker_lost are safe because launch and terminate are idempotent and re-check the job
first: a redelivered launch finds the job no longer queued, or the backend adopts the workload it
already created under the job's deterministic name. Retries happen only for BackendError with
retryable=True (daemon unreachable, API 5xx), with capped exponential backoff; a permanent error is
recorded on the job by the service. Every failed launch attempt is a note on the job's timeline and
its reason/detail (what failed, attempt n of N, when the next try is), never a silent wait.
"""

import logging

from celery import shared_task
from django.conf import settings
from django.core.cache import cache

from backends.base import BackendError, EngineUnreachable

log = logging.getLogger(__name__)
MAX_RETRIES = 8  # terminate; launches: LAUNCHER_LAUNCH_RETRIES (same default)
BACKOFF_START, BACKOFF_CAP = 2, 60  # seconds; must stay below LAUNCHER_TASK_VISIBILITY_SECONDS
ROBUST = {"bind": True, "acks_late": True, "reject_on_worker_lost": True, "max_retries": MAX_RETRIES}
# A scheduled retry counts as pending for its countdown plus this long (the attempt itself): a
# re-submit meanwhile queues no second launch; after it, the retries were cut (a worker died).
RETRY_GRACE = 30
# The reasons a job waiting for a launch retry carries (jobs.services.submission reads them).
RETRY_REASONS = ("EngineUnreachable", "BackendUnavailable")


def _countdown(retries: int, start: int = BACKOFF_START) -> int:
    return min(BACKOFF_CAP, start * 2 ** retries)


def _retry_key(job_pk: int) -> str:
    return f"launch-retry:{job_pk}"


def launch_retry_pending(job_pk: int) -> bool:
    """Whether this job's launch has a retry scheduled (jobs.services.submission asks before it
    queues a stalled job's launch again). The cache is shared by every process (Redis), or is this
    one process's (embedded). Unreadable cache: False, so a launch is queued rather than lost."""
    try:
        return cache.get(_retry_key(job_pk)) is not None
    except Exception:
        log.warning("cannot read the launch retry state of job %s", job_pk, exc_info=True)
        return False


def _retry_mark(job_pk: int, countdown: int | None) -> None:
    try:
        if countdown is None:
            cache.delete(_retry_key(job_pk))
        else:
            cache.set(_retry_key(job_pk), countdown, timeout=countdown + RETRY_GRACE)
    except Exception:  # only the resubmit check reads it; the launch goes on
        log.warning("cannot record the launch retry state of job %s", job_pk, exc_info=True)


def _duration(seconds: int) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes} min {seconds} s" if minutes else f"{seconds} s"


@shared_task(**ROBUST)
def job_launch_task(self, job_pk: int, sealed_credentials: str) -> None:
    """`sealed_credentials`: jobs.services.sealing.credentials_seal() of the job's credential args."""
    from backends.base import JobState
    from jobs.services.launching import job_launch
    from jobs.services.lifecycle import job_note, job_observe, verdict
    from jobs.services.sealing import SealBroken, credentials_unseal

    try:
        credentials = credentials_unseal(sealed_credentials)
    except SealBroken as exc:
        job_observe(job_pk, verdict(JobState.LAUNCH_FAILED, reason="CredentialsUnreadable", message=str(exc)),
                    source="worker")
        return
    retries, limit = self.request.retries, settings.LAUNCHER_LAUNCH_RETRIES
    try:
        job_launch(job_pk=job_pk, credentials=credentials)
    except BackendError as exc:  # job_launch lets only retryable errors out
        start = settings.LAUNCHER_LAUNCH_RETRY_BACKOFF
        if retries >= limit:
            if retries:
                _retry_mark(job_pk, None)
            waited = sum(_countdown(n, start) for n in range(retries))
            attempts = f"{retries + 1} attempt{'s' if retries else ''}"
            job_observe(job_pk, verdict(JobState.LAUNCH_FAILED, reason="BackendUnavailable", message=(
                f"gave up after {retries} retries ({attempts} in {_duration(waited)}): {exc}")), source="worker")
            return
        countdown = _countdown(retries, start)
        # Said at once, on the job's timeline and in its payload (reason/detail): the admin and the
        # FL server see why the job waits from the first failed attempt on.
        job_note(job_pk, source="worker", reason=RETRY_REASONS[0 if isinstance(exc, EngineUnreachable) else 1],
                 message=f"launch attempt {retries + 1} of {limit + 1} failed: {exc}; next try in {countdown} s")
        _retry_mark(job_pk, countdown)
        raise self.retry(exc=exc, countdown=countdown, max_retries=limit)
    if retries:
        _retry_mark(job_pk, None)


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


WEBHOOK_RETRIES = 3  # attempts after the first; each one is a WebhookDelivery row


@shared_task(bind=True, acks_late=True, max_retries=WEBHOOK_RETRIES)
def webhook_deliver_task(self, webhook_pk: int, event: str, payload: dict) -> None:
    """jobs.services.notifications: one attempt, then retries with backoff (LAUNCHER_WEBHOOK_BACKOFF,
    2 s doubling) while the receiver gives no answer, a 5xx or a 429."""
    from jobs.services.notifications import webhook_deliver

    retries = self.request.retries
    if webhook_deliver(webhook_pk=webhook_pk, event=event, payload=payload, attempt=retries + 1) \
            and retries < WEBHOOK_RETRIES:
        raise self.retry(countdown=_countdown(retries, settings.LAUNCHER_WEBHOOK_BACKOFF))


# The web process's engine calls (jobs.services.engine_calls): plain data in and out, results kept
# (CELERY_RESULT_BACKEND) for the request that waits on them. Not acks_late: a read that a lost
# worker dropped is not worth redelivering; the request has answered "no answer" by then.
ENGINE_CALL = {"ignore_result": False, "acks_late": False, "reject_on_worker_lost": False}


@shared_task(**ENGINE_CALL)
def site_check_task(site: dict, datasets: list, images: list) -> dict:
    from jobs.services.connection_check import site_engine_checks
    from jobs.services.engine_calls import answer

    return answer(site_engine_checks, site=site, datasets=datasets, images=images)


@shared_task(**ENGINE_CALL)
def workload_output_task(site: dict, handle: dict, tail: int | None, limit: int) -> dict:
    from jobs.services.engine_calls import answer
    from jobs.services.job_logs import workload_output

    return answer(workload_output, site=site, handle=handle, tail=tail, limit=limit)


@shared_task(**ENGINE_CALL)
def submit_check_task(site: dict, request: dict, sealed_credentials: str) -> dict:
    """A submit's checks that read the site's host (workspace, dataset and secret sources): run
    where those are. `sealed_credentials` as job_launch_task's."""
    from jobs.services.engine_calls import answer
    from jobs.services.submission import submit_check

    return answer(submit_check, site=site, request=request, sealed_credentials=sealed_credentials)


@shared_task(**ENGINE_CALL)
def dataset_source_task(site: dict, sources: list) -> dict:
    """A dataset save's filesystem checks of its sources (they exist, symlinks resolved): run where
    the site's data is (jobs.services.dataset_sources)."""
    from jobs.services.dataset_sources import dataset_source_errors
    from jobs.services.engine_calls import answer

    return answer(dataset_source_errors, site=site, sources=sources)
