"""A job's federated training progress, kept on its row (`Job.progress`) and pushed to its readers.

Two feeds, one shape: while a job runs, its log follower (jobs.watchers) hands each batch of new
output lines to a `ProgressFeed`; when its logs tail is saved after the exit, the lifecycle door asks
`job_progress_from_tail`. Both fold the lines with backends.progress onto what is stored, and the
row is written (through jobs.services.lifecycle.job_note, which pushes a job.update) only when
something a reader sees changed: a new round, a new aggregation, the total, the end. A follower
reads once a second, so a job writes at most once a second however much it prints.

The stored dict: {"round", "total_rounds", "aggregation_round", "aggregated_updates", "finished",
"last_aggregation_at", "updated_at"}; `round` is NVFlare's own round number (0 for the first);
times are when the launcher saw the line (the job's own clock and zone are not trusted), ISO 8601 UTC.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import os
from collections.abc import Iterable

from django.utils import timezone

from backends.progress import (
    Progress,
    config_num_rounds,
    progress_fold,
    progress_from_public,
)

log = logging.getLogger(__name__)


def progress_next(stored: dict | None, state: Progress, *, now: datetime.datetime) -> dict | None:
    """The dict to store for `state` after `stored`; None when nothing a reader sees changed."""
    if state.empty:
        return None
    before = progress_from_public(stored)
    seen = state.public()
    if stored is not None and seen == before.public():
        return None
    when = _iso(now)
    last = stored.get("last_aggregation_at") if isinstance(stored, dict) else None
    aggregation = (state.aggregation_round, state.aggregated_updates)
    if aggregation != (before.aggregation_round, before.aggregated_updates) and aggregation != (None, None):
        last = when
    return _stored(state, last, when)


def _stored(state: Progress, last: str | None, when: str) -> dict:
    # What readers see (jobs.payloads.PROGRESS_FIELDS), stored as they see it.
    return {**state.public(), "last_aggregation_at": last if isinstance(last, str) else None, "updated_at": when}


def job_progress_from_tail(job, logs_tail: str) -> dict | None:
    """What a job's saved logs tail adds to its stored progress (None: nothing). Called by the
    lifecycle door, inside its transaction, when the tail is stored; never raises, so that progress
    can never stop a tail or an exit from being recorded."""
    try:
        if str(job.role) not in ("server", "client") or not logs_tail:
            return None
        state = progress_fold(progress_from_public(job.progress), logs_tail.splitlines(), role=str(job.role))
        if state.empty:
            return None
        state = _with_config_total(job, state)
        return progress_next(job.progress, state, now=timezone.now())
    except Exception:
        log.exception("could not read the progress of job %s from its logs tail", job.pk)
        return None


def _with_config_total(job, state: Progress) -> Progress:
    """A server job's total from its deployed config when its output did not say it."""
    if state.total_rounds is not None or str(job.role) != "server":
        return state
    try:
        total = config_num_rounds(job_workspace(job), job.job_id)
    except (OSError, ValueError):
        log.warning("could not read the server config of job %s", job.pk, exc_info=True)
        total = None
    return dataclasses.replace(state, total_rounds=total) if total else state


def job_workspace(job) -> str:
    """The host directory holding the job's own directory, where the launcher can see it: the
    site workspace of a process or Docker job (staff-configured); "" for Kubernetes."""
    backend = str(job.backend or job.site.backend)
    if backend not in ("process", "docker"):
        return ""
    settings = getattr(job.site, backend, None) or {}
    workspace = settings.get("workspace") if isinstance(settings, dict) else None
    if backend == "docker" and not workspace:
        workspace = os.environ.get("NVFL_DOCKER_WORKSPACE", "")
    return workspace if isinstance(workspace, str) else ""


class ProgressFeed:
    """One running job's progress, fed its new output lines by its log follower (one thread).
    Holds the fold between batches (a banner split across two reads still counts); the row stays
    the record, and a new feed starts from it."""

    def __init__(self, job_pk: int):
        self.job_pk = job_pk
        self.job = None
        self.fold: Progress | None = None
        self.stored: dict | None = None
        self.config_tried = False

    def feed(self, lines: Iterable[str]) -> dict | None:
        """Fold `lines`; store and push what changed. Returns what was stored (None: nothing).
        Never raises: progress is a nicety and must not stop the follower."""
        lines = list(lines)
        if not lines:
            return None
        try:
            return self._feed(lines)
        except Exception:
            log.exception("could not record the progress of job %s", self.job_pk)
            return None

    def _feed(self, lines: list[str]) -> dict | None:
        from jobs.models import Job
        from jobs.services.lifecycle import job_note  # the door imports this module

        if self.job is None:
            self.job = Job.objects.select_related("site").filter(pk=self.job_pk).first()
            if self.job is None:
                return None
            self.stored = self.job.progress
            self.fold = dataclasses.replace(progress_from_public(self.stored), banner=0)
        role = str(self.job.role)
        state = progress_fold(self.fold, lines, role=role)
        if not state.empty and not self.config_tried and state.total_rounds is None and role == "server":
            self.config_tried = True
            state = _with_config_total(self.job, state)
        self.fold = state
        value = progress_next(self.stored, state, now=timezone.now())
        if value is None:
            return None
        job, _ = job_note(self.job_pk, source="watcher", progress=value)
        self.stored = job.progress
        return value


def _iso(when: datetime.datetime) -> str:
    text = when.astimezone(datetime.UTC).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text
