"""The one door: `job_create`, `job_observe` and `job_note` are the only code that writes a job or
its events (tests/live/test_one_door.py keeps it so).

- job_create: the row, its first event ("queued"), any notes, and the publish after commit.
- job_observe: what was seen of a job's workload (an Observation, from a backend or the
  launcher's own `verdict`): forward-only state changes, one JobEvent each, published after commit.
- job_note: what is not a state change: a timeline note, the logs tail saved after an exit, a
  terminate request, the training progress read from the job's output (jobs.services.progress;
  a stored tail updates it too).
"""

from __future__ import annotations

import copy
from collections.abc import Iterable
from datetime import datetime
from datetime import timezone as dt_timezone
from typing import Any

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from backends.base import Handle, JobState, LaunchSpec, Observation, ReturnCode
from backends.logtail import cap_tail
from jobs import events
from jobs.models import EventSource, Job, JobEvent, Site
from jobs.services.notifications import job_state_notify
from jobs.services.progress import job_progress_from_tail

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
WAITING = (JobState.QUEUED, JobState.STARTING)
# Used when an observation of a terminal state carries no return code of its own.
DEFAULT_RETURN_CODE = {
    JobState.SUCCEEDED: ReturnCode.SUCCESS,
    JobState.FAILED: ReturnCode.EXECUTION_ERROR,
    JobState.ABORTED: ReturnCode.ABORTED,
    JobState.LOST: ReturnCode.ABORTED,  # as NVFlare: a container that vanished counts as aborted
    # A launch that never started (engine unreachable after the retries, image missing, the daemon
    # refusing the create): INFRASTRUCTURE_ERROR, as NVFlare's parents report a job that died before
    # checking in. A spec the submitter got wrong is recorded with EXCEPTION (101) by its caller.
    JobState.LAUNCH_FAILED: ReturnCode.INFRASTRUCTURE_ERROR,
}
# The timeline entry of a state change whose observation said nothing: never an empty event.
DEFAULT_MESSAGE = {
    JobState.QUEUED: "queued",
    JobState.STARTING: "workload starting",
    JobState.RUNNING: "workload running",
    JobState.SUCCEEDED: "finished successfully",
    JobState.FAILED: "failed",
    JobState.ABORTED: "aborted",
    JobState.LAUNCH_FAILED: "launch failed",
    JobState.LOST: "workload lost",
}


def verdict(state: JobState | str, *, message: str = "", reason: str = "", return_code: int | None = None,
            exit_code: int | None = None, logs_tail: str | None = None) -> Observation:
    """An observation the launcher makes itself, of no workload (launch failed, aborted before
    launch, vanished...): no ref, so it adopts no handle."""
    return Observation(ref="", state=JobState(state), message=message, reason=reason, return_code=return_code,
                       exit_code=exit_code, logs_tail=logs_tail)


def job_create(
    *, site: Site, job_id: str, source: str, message: str, notes: Iterable[str] = (), **fields: Any,
) -> Job:
    """Record a new job (queued) with its first event and any `notes`, and publish it after commit.
    `fields`: the Job columns known at submit (role, study, image, backend, workload, job_meta,
    job_args, set_options, request, submitted_by, submitted_by_token). Raises IntegrityError (in a
    savepoint, so the caller's transaction stays usable) when (site, job_id) or the workload name
    is taken."""
    _check_source(source)
    with transaction.atomic():
        job = Job.objects.create(site=site, job_id=job_id, **fields)
        event = JobEvent.objects.create(job=job, from_state="", to_state=JobState.QUEUED, source=source,
                                        message=message or DEFAULT_MESSAGE[JobState.QUEUED])
        for note in notes:
            JobEvent.objects.create(job=job, from_state=JobState.QUEUED, to_state=JobState.QUEUED, source=source,
                                    message=note)
        _publish_after_commit(job, event)
    return job


def job_observe(
    job: Job | int, observation: Observation, *, source: str, launched: LaunchSpec | None = None,
) -> tuple[Job, bool]:
    """Apply one observation to a job and return (job, changed).

    A forward move changes the state, writes one JobEvent and, after commit, publishes the job to its
    channel-layer groups. Duplicate, backward or post-terminal observations change nothing (apart from
    filling in a missing handle/spec/logs tail). An observation of kind "event" is a note (job_note).
    `launched`: the spec the workload was launched from (kept, credentials redacted, with its image).
    A workload seen before its launch was recorded (the watcher saw it start before the launch task
    saved its handle, or a worker killed mid-launch) is adopted through the observation's ref, so
    that terminate, logs and the log follower reach it from its first recorded state. An observation
    of a workload that is not the job's (_own_workload) changes nothing.
    Row-locked (SELECT ... FOR UPDATE on PostgreSQL; SQLite's immediate transactions serialise
    writers), so two writers cannot interleave. Safe to call from any thread or process. Sources:
    api, worker, watcher, reconcile (admin for manual fixes). Raises Job.DoesNotExist, ValueError.
    """
    if observation.kind == "event":
        return job_note(job, source=source, message=observation.message, reason=observation.reason)
    new = JobState(observation.state)
    _check_source(source)
    message, return_code = observation.message, observation.return_code
    logs_tail = _kept_tail(observation.logs_tail)
    with transaction.atomic():  # SQLite: an IMMEDIATE transaction, which serialises writers like the row lock
        job = _locked(job)
        current = JobState(job.state)
        if not _own_workload(job, observation.ref, launched):
            return job, False
        handle = Handle(job.backend or job.site.backend, observation.ref).as_dict() if observation.ref else None
        dirty = _fill_missing(job, handle=handle, logs_tail=logs_tail,
                              spec=launched.redacted() if launched else None, image=launched.image if launched else None)
        progress = job_progress_from_tail(job, logs_tail) if logs_tail else None
        if progress is not None:
            job.progress, dirty = progress, True

        if current.is_terminal or RANK[new] <= RANK[current]:
            if dirty:
                job.save()
            if progress is not None:
                _publish_after_commit(job, None)
            if new is current and current in WAITING and observation.reason and observation.message:
                # Still waiting, for a reason the backend names (a Kubernetes pending reason): shown.
                return job_note(job, source=source, message=observation.message, reason=observation.reason)
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
            job.exited_at = _engine_time(observation.at)  # for the exit -> publish latency (/metrics)
            job.return_code = int(return_code if return_code is not None else DEFAULT_RETURN_CODE[new])
            job.exit_code = observation.exit_code
            if logs_tail is not None:
                job.logs_tail = logs_tail
        if observation.reason or current in WAITING:  # a reason to wait ends with the wait
            job.reason = observation.reason[:200]
        if not message:
            message = _default_message(new, job.return_code if new.is_terminal else None, observation.reason)
        job.detail = message
        job.save()
        event = JobEvent.objects.create(job=job, from_state=current, to_state=new, message=message, source=source)
        _publish_after_commit(job, event)
        job_state_notify(job, new)  # webhooks for failed/launch_failed/lost, queued after commit
        return job, True


def job_note(
    job: Job | int, *, source: str, message: str = "", logs_tail: str | None = None,
    terminate_requested: bool = False, progress: dict | None = None, reason: str = "",
    usage: dict | None = None,
) -> tuple[Job, bool]:
    """Record what is not a state change; returns (job, changed).

    `message`: a timeline note (an image pull, a pending reason, a terminate request), skipping an
    exact repeat of the previous note. `logs_tail`: a finished job's output, kept when the job has
    none yet (watchers record an exit first and read its tail afterwards; the job's page is told to
    reload the saved tail; no JobEvent). `terminate_requested`: stamp the request (kept from the
    first), so that an exit observed afterwards counts as aborted. `progress`: the job's training
    progress (jobs.services.progress), stored when it differs and pushed as a job.update (no JobEvent);
    a stored tail updates it too. `reason` (with `message`): why a job still queued or starting
    waits (engine unreachable, a pending reason); kept as its reason and detail, so that the API
    and the FL server read it too, until the next state change. `usage`: the latest resource
    sample of a running job (jobs.services.usage), stored and pushed like `progress`; ignored once
    the job has ended (a sample taken just before the exit must not outlive it).
    """
    _check_source(source)
    logs_tail = _kept_tail(logs_tail)
    with transaction.atomic():
        job = _locked(job)
        changed = dirty = False
        if terminate_requested and job.terminate_requested_at is None:
            job.terminate_requested_at = timezone.now()
            dirty = True
        if logs_tail and not job.logs_tail:
            job.logs_tail = logs_tail
            dirty = changed = True
            job_pk = job.pk
            transaction.on_commit(lambda: events.publish_logs_saved(job_pk))
            progress = job_progress_from_tail(job, logs_tail) or progress
        progressed = progress is not None and progress != job.progress
        if progressed:
            job.progress = progress
            dirty = changed = True
        sampled = usage is not None and not job.is_terminal and usage != job.usage
        if sampled:
            job.usage = usage
            dirty = changed = True
        event, waiting = None, False
        if message:
            last = job.events.order_by("-id").first()
            if last is None or last.message != message:
                event = JobEvent.objects.create(job=job, from_state=job.state, to_state=job.state, message=message,
                                                source=source)
                dirty = changed = True  # saving bumps updated_at, so lists show the note's time
            waiting = bool(reason) and job.state in WAITING and (job.reason, job.detail) != (reason[:200], message)
            if waiting:
                job.reason, job.detail = reason[:200], message
                dirty = changed = True
        if dirty:
            job.save()
        if event is not None or progressed or waiting or sampled:
            _publish_after_commit(job, event)
        return job, changed


def _default_message(state: JobState, return_code: int | None, reason: str) -> str:
    text = DEFAULT_MESSAGE[state]
    if return_code is not None:
        text += f" (return code {return_code})"
    return f"{text}: {reason}" if reason else text


def _engine_time(at: float | None):
    """An Observation's engine timestamp (epoch seconds) as a datetime; None when it has none."""
    if at is None:
        return None
    try:
        return datetime.fromtimestamp(float(at), tz=dt_timezone.utc)
    except (TypeError, ValueError, OverflowError, OSError):
        return None


def _check_source(source: str) -> None:
    if source not in EventSource.values:
        raise ValueError(f"unknown event source {source!r}; expected one of {', '.join(EventSource.values)}")


def _locked(job: Job | int) -> Job:
    # of=("self",): lock the job row only, not its site (read along for the published payload).
    pk = job if isinstance(job, int) else job.pk
    return Job.objects.select_related("site").select_for_update(of=("self",)).get(pk=pk)


def _kept_tail(logs: str | None) -> str | None:
    """Every kept tail: LAUNCHER_LOGS_TAIL_LINES lines within LAUNCHER_LOGS_TAIL_BYTES, no final newline."""
    if not logs:
        return logs
    return cap_tail(logs, lines=settings.LAUNCHER_LOGS_TAIL_LINES or None, final_newline=False)


def _own_workload(job: Job, ref: str, launched: LaunchSpec | None) -> bool:
    """Whether an observation is of this job's workload: the one its handle names, else the name
    recorded at submit (Job.workload, unique per site). Another name carrying the job's label (a
    leftover of an earlier launch, a copied label) must neither move the state nor become the
    handle. A verdict (no ref) and the launching worker's own report (`launched`) always are."""
    if not ref or launched is not None:
        return True
    own = (job.handle or {}).get("ref") or job.workload
    return not own or ref == own


def _fill_missing(job: Job, **values: Any) -> bool:
    """Set handle/spec/image/logs tail when the job has none yet: a watcher may record a state
    before the worker that launched the workload records what it launched."""
    dirty = False
    for field, value in values.items():
        if value is not None and value != "" and not getattr(job, field):
            setattr(job, field, value)
            dirty = True
    return dirty


def _publish_after_commit(job: Job, event: JobEvent | None) -> None:
    # The row as committed (a copy: the caller may change its object afterwards), so the publisher
    # does not read it back. No event (a progress change): no seq, so resume never skips it.
    committed, event_id = copy.copy(job), event.pk if event is not None else None
    transaction.on_commit(lambda: events.publish_job(committed.pk, seq=event_id, job=committed))
