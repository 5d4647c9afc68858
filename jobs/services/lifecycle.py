"""The one door: `job_observe` is the only code that changes a job's state."""

from __future__ import annotations

import copy
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backends.base import JobState, ReturnCode
from backends.logtail import cap_tail
from jobs import events
from jobs.models import EventSource, Job, JobEvent

# Forward-only: a job may only move to a state of higher rank. All terminal states share the top
# rank, so the first terminal state sticks and later ones are ignored.
RANK = {
    JobState.QUEUED: 0,
    JobState.STARTING: 1,
    JobState.RUNNING: 2,
    JobState.SUCCEEDED: 3,
    JobState.FAILED: 3,
    JobState.ABORTED: 3,
    JobState.LAUNCH_FAILED: 3,
    JobState.LOST: 3,
}
# Used when an observation of a terminal state carries no return code of its own.
DEFAULT_RETURN_CODE = {
    JobState.SUCCEEDED: ReturnCode.SUCCESS,
    JobState.FAILED: ReturnCode.EXECUTION_ERROR,
    JobState.ABORTED: ReturnCode.ABORTED,
    JobState.LOST: ReturnCode.ABORTED,  # as NVFlare: a container that vanished counts as aborted
    JobState.LAUNCH_FAILED: ReturnCode.EXCEPTION,
}


def job_observe(
    *,
    job_pk: int,
    state: JobState | str,
    source: str,
    message: str = "",
    note_only: bool = False,
    return_code: int | None = None,
    exit_code: int | None = None,
    reason: str = "",
    logs_tail: str | None = None,
    handle: dict[str, Any] | None = None,
    spec: dict[str, Any] | None = None,
    image: str | None = None,
) -> tuple[Job, bool]:
    """Apply one observation to a job and return (job, changed).

    A forward move changes the state, writes one JobEvent and, after commit, publishes the job to its
    channel-layer groups. Duplicate, backward or post-terminal observations change nothing (apart from
    filling in a missing handle/spec/logs tail). `note_only` records a timeline note without a state
    change (an image pull, a pending reason), skipping an exact repeat of the previous note.
    Row-locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite's immediate transactions serialise
    writers), so two writers cannot interleave. Safe to call from any thread or process. Sources:
    api, worker, watcher, reconcile (admin for manual fixes). Raises Job.DoesNotExist, ValueError.
    """
    new = JobState(state)
    if logs_tail:  # every kept tail: LAUNCHER_LOGS_TAIL_LINES lines within LAUNCHER_LOGS_TAIL_BYTES
        logs_tail = cap_tail(logs_tail, lines=settings.LAUNCHER_LOGS_TAIL_LINES or None)
    if source not in EventSource.values:
        raise ValueError(f"unknown event source {source!r}; expected one of {', '.join(EventSource.values)}")
    with transaction.atomic():  # SQLite: an IMMEDIATE transaction, which serialises writers like the row lock
        # of=("self",): lock the job row only, not its site (read along for the published payload).
        job = Job.objects.select_related("site").select_for_update(of=("self",)).get(pk=job_pk)
        current = JobState(job.state)
        dirty = _fill_missing(job, handle=handle, spec=spec, image=image, logs_tail=logs_tail)

        if note_only:
            last = job.events.order_by("-id").first()
            if last is not None and last.message == message:
                if dirty:
                    job.save()
                return job, False
            event = JobEvent.objects.create(job=job, from_state=current, to_state=current, message=message, source=source)
            job.save()  # bumps updated_at so lists show the note's time
            _publish_after_commit(job, event)
            return job, True

        if current.is_terminal or RANK[new] <= RANK[current]:
            if dirty:
                job.save()
            return job, False

        if job.terminate_requested_at and new in (JobState.FAILED, JobState.LOST):
            # As NVFlare: a job ended by terminate is aborted (9), whichever observer saw the exit
            # first (a watcher's "died with 137" may arrive before the worker's terminate result).
            new, return_code = JobState.ABORTED, ReturnCode.ABORTED
            message = f"terminated on request ({message})" if message else "terminated on request"
        now = timezone.now()
        job.state = new.value
        if new is JobState.RUNNING or (new.is_terminal and job.started_at is None and RANK[current] >= 1):
            job.started_at = job.started_at or now
        if new.is_terminal:
            job.finished_at = now
            job.return_code = int(return_code if return_code is not None else DEFAULT_RETURN_CODE[new])
            job.exit_code = exit_code
            if logs_tail is not None:
                job.logs_tail = logs_tail
        if reason:
            job.reason = reason[:200]
        if message:
            job.detail = message
        job.save()
        event = JobEvent.objects.create(job=job, from_state=current, to_state=new, message=message, source=source)
        _publish_after_commit(job, event)
        return job, True


def _fill_missing(job: Job, **values: Any) -> bool:
    """Set handle/spec/image/logs tail when the job has none yet: a watcher may record a state
    before the worker that launched the workload records what it launched."""
    dirty = False
    for field, value in values.items():
        if value is not None and value != "" and not getattr(job, field):
            setattr(job, field, value)
            dirty = True
    return dirty


def _publish_after_commit(job: Job, event: JobEvent) -> None:
    # The row as committed (a copy: the caller may change its object afterwards), so the publisher
    # does not read it back.
    committed, event_id = copy.copy(job), event.pk
    transaction.on_commit(lambda: events.publish_job(committed.pk, seq=event_id, job=committed))


def job_save_logs_tail(*, job_pk: int, logs_tail: str | None) -> bool:
    """Keep a finished job's logs tail when it has none yet (not a state change, so no JobEvent).
    Watchers record an exit first and read its tail afterwards; the job's page is told to reload
    the saved tail. Returns whether it was saved."""
    if not logs_tail:
        return False
    logs_tail = cap_tail(logs_tail, lines=settings.LAUNCHER_LOGS_TAIL_LINES or None, final_newline=False)
    if not logs_tail:
        return False
    saved = bool(Job.objects.filter(pk=job_pk, logs_tail="").update(logs_tail=logs_tail))
    if saved:
        events.publish_logs_saved(job_pk)
    return saved
