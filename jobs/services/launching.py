"""Launch, terminate and observe jobs through their site's backend.

Backend calls happen outside any transaction; each outcome is recorded through the lifecycle door
(job_observe, job_note). The request launched is the one stored at submit (jobs.services.requests),
with the credentials from the launch task's sealed message and the study data read now.
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import queue
import threading
from typing import Any

from django.conf import settings
from django.db import connection, transaction

from backends.base import (
    BackendError,
    Handle,
    InvalidJobSpec,
    JobState,
    LaunchSpec,
    Observation,
    ReturnCode,
)
from jobs.models import Job
from jobs.services.job_logs import job_log_save
from jobs.services.lifecycle import job_note, job_observe, verdict
from jobs.services.requests import request_to_launch
from jobs.services.runtime_facts import backend_error_recorded
from jobs.services.sites import site_backend

log = logging.getLogger(__name__)


def job_launch(*, job_pk: int, credentials: dict[str, Any]) -> Job | None:
    """Start a queued job's workload. Idempotent: a job that is no longer queued is left alone, and a
    workload that already exists is adopted by the backend. Raises BackendError only when retrying
    can help (retryable=True); permanent failures end the job as launch_failed."""
    job = Job.objects.select_related("site").filter(pk=job_pk).first()
    # A job already "starting" is launched again too: its launcher may have died after the watcher
    # saw the workload being created; the backend adopts whatever already exists.
    if job is None or job.state not in (JobState.QUEUED, JobState.STARTING):
        return job
    if job.terminate_requested_at is not None:
        # Terminated while this launch waited (a retry, a redelivery, a resubmit re-queued it):
        # never start a workload for it; stop whatever an earlier attempt may have started.
        return job_terminate(job_pk=job.pk)
    backend = site_backend(job.site)
    try:
        spec = backend.prepare(request_to_launch(job, credentials=credentials))
        handle = backend.launch(spec)
    except BackendError as exc:
        if exc.retryable:  # retried by the task: counted for /metrics, the job goes on
            backend_error_recorded(exc, operation="launch", site_pk=job.site_id)
            raise
        job, _ = job_observe(job, launch_failed(exc), source="worker")
        return job
    return launch_record(job, backend, spec, handle)


def launch_record(job: Job, backend, spec: LaunchSpec, handle: Handle) -> Job:
    """Record a workload this launch created or adopted. The watcher may have recorded it running
    (with its handle) already: "created" is then a backward move that only fills in the spec and
    image, so the state never goes back to starting."""
    created = Observation(ref=handle.ref, state=JobState.STARTING, message=f"{backend.kind} workload {handle.ref} created")
    job, _ = job_observe(job, created, source="worker", launched=spec)
    if job.is_terminal:  # terminated (or lost) while we were launching: do not leave it running
        return job_apply_observation(backend.terminate(handle), source="worker", job=job)
    # The watcher normally reports what follows; inspecting once closes the gap for a fast job.
    observation = backend.inspect(handle, terminate_requested=job.terminate_requested_at is not None)
    return job_apply_observation(observation, source="worker", job=job)


def launch_failed(exc: BackendError) -> Observation:
    """The verdict on a launch that failed for good. A request the launcher refuses (InvalidJobSpec:
    the submitter's spec, or a study/site setting that changed under it) is EXCEPTION (101): NVFlare's
    launchers raise on such a spec before any workload exists, and 103 CONFIG_ERROR is what a *job
    process* exits with when its own job config is wrong. Anything else (image missing, the daemon
    refusing the create, the engine unreachable) means the launch never started: INFRASTRUCTURE_ERROR
    (104), which NVFlare's parents report for a job that died before checking in, and which the parent
    keeps over any _process_rc.txt."""
    if isinstance(exc, InvalidJobSpec):
        return verdict(JobState.LAUNCH_FAILED, message=str(exc), reason="InvalidSpec",
                       return_code=int(ReturnCode.EXCEPTION))
    return verdict(JobState.LAUNCH_FAILED, message=str(exc), reason="LaunchError",
                   return_code=int(ReturnCode.INFRASTRUCTURE_ERROR))


def job_terminate(*, job_pk: int) -> Job | None:
    """Stop a job's workload and record the outcome. Idempotent."""
    job = Job.objects.select_related("site").filter(pk=job_pk).first()
    if job is None or job.is_terminal:
        return job
    if not job.handle:
        job, _ = job_observe(job, verdict(JobState.ABORTED, message="terminated before launch"), source="worker")
        return job
    backend = site_backend(job.site)
    observation = backend.terminate(Handle(**job.handle))  # a workload already gone answers aborted (9)
    if observation.state.is_terminal and not observation.message:
        observation = dataclasses.replace(observation, message="terminated on request")
    return job_apply_observation(observation, source="worker", job=job)


def job_apply_observation(
    observation: Observation, *, source: str, job: Job | None = None, site_pk: int | None = None,
) -> Job | None:
    """Record what a backend saw (job_observe). After a terminal state has committed, the
    workload's logs tail is saved (when the observation carried none) and then the workload is
    removed, off this thread. Without `job`, the job is found by the workload's label (restricted
    to `site_pk` when given); None when no job claims it."""
    if job is None:
        job = _job_for(observation, site_pk)
        if job is None:
            return None
    job, _ = job_observe(job, observation, source=source)
    if observation.kind != "state":
        return job
    if job.is_terminal and job.handle and observation.state.is_terminal and observation.state is not JobState.LOST \
            and observation.ref in ("", job.handle.get("ref")):  # never finish on another workload's exit
        # The state is recorded (and pushed) first; reading the logs tail is an engine call that
        # must not delay it. The tail is saved next, then the workload is removed.
        handle, job_pk, save_tail = Handle(**job.handle), job.pk, not job.logs_tail
        backend = site_backend(job.site)
        transaction.on_commit(lambda: _finisher.finish(backend, handle, job_pk, save_tail))
    return job


def _job_for(observation: Observation, site_pk: int | None = None) -> Job | None:
    if observation.job_pk and observation.job_pk.isdigit():
        jobs = Job.objects.select_related("site").filter(pk=int(observation.job_pk))
        if site_pk is not None:  # a label claiming another site's job is not trusted
            jobs = jobs.filter(site_id=site_pk)
        return jobs.first()
    return None


class _Finisher:
    """After an exit is recorded, its workload's logs tail is saved and then the workload removed,
    on this one thread, so that recording the next exits never waits for either. One at a time, and
    tails before removals: each call costs the engine real work (removal: unmounting, deleting), and
    many at once slow down how soon it reports the next exits, while a saved tail is what the job's
    page waits for. Work lost with the process is done by the next reconcile (a leftover of a
    finished job: tail saved, then removed)."""

    TAIL, REMOVE = 0, 1

    def __init__(self) -> None:
        self.queue: queue.PriorityQueue = queue.PriorityQueue()
        self.order = itertools.count()  # FIFO within a priority
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None

    def finish(self, backend, handle: Handle, job_pk: int, save_tail: bool) -> None:
        self._put(self.TAIL, self._save_tail, backend, handle, job_pk, save_tail)  # the whole output, always

    def _put(self, priority: int, function, *args) -> None:
        self.queue.put((priority, next(self.order), function, args))
        with self.lock:
            if self.thread is None or not self.thread.is_alive():  # first use, or a forked worker child
                self.thread = threading.Thread(target=self._run, name="workload-finisher", daemon=True)
                self.thread.start()

    def _run(self) -> None:
        while True:
            _, _, function, args = self.queue.get()
            try:
                function(*args)
            except Exception:
                log.exception("finishing a workload failed; reconcile will retry")

    def _save_tail(self, backend, handle: Handle, job_pk: int, save_tail: bool = True) -> None:
        try:
            if save_tail:
                job_note(job_pk, source="worker", logs_tail=backend.logs(handle, tail=settings.LAUNCHER_LOGS_TAIL_LINES))
            job_log_save(job_pk, backend, handle)  # the whole output (jobs.services.job_logs), byte-bounded
        except Exception:  # removing it anyway would lose the output: reconcile saves the tail, then removes
            log.warning("could not save the logs tail of %s; reconcile will retry", handle.ref, exc_info=True)
            return
        finally:
            connection.close()  # this thread keeps no database connection between jobs
        self._put(self.REMOVE, self._remove, backend, handle)

    @staticmethod
    def _remove(backend, handle: Handle) -> None:
        try:
            backend.cleanup(handle)
        except BackendError:
            log.warning("could not remove finished workload %s; reconcile will retry", handle.ref, exc_info=True)


_finisher = _Finisher()
