"""What a reconnecting browser missed: the resume handshake of the websocket consumers.

Sequence numbers are JobEvent ids (one global sequence). A client that saw everything up to `seq`
gets one job.update per job changed since then (current payload, that job's latest seq), oldest
change first; when it is too far behind (or names a seq this database never issued) it gets one
snapshot instead.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Max

from jobs import events
from jobs.models import ACTIVE, Job, JobEvent, Site

SNAPSHOT_RECENT_JOBS = 200  # a site snapshot holds every active job plus this many recent ones


@dataclass
class ResumeReply:
    """Either `updates` (job.update messages, in order) or `snapshot` (a snapshot message)."""

    updates: list[dict] = field(default_factory=list)
    snapshot: dict | None = None
    last: int = 0  # the latest seq when the question was asked: everything up to it is answered

    @property
    def messages(self) -> list[dict]:
        return [self.snapshot] if self.snapshot is not None else self.updates


def site_jobs_resume(*, site: Site, seq) -> ResumeReply:
    """The site's job changes after `seq` (see the module docstring)."""
    return _resume(Job.objects.filter(site=site), seq, snapshot_jobs=lambda _jobs: _site_snapshot(site))


def job_resume(*, job: Job, seq) -> ResumeReply:
    """One job's change after `seq`, if any."""
    return _resume(Job.objects.filter(pk=job.pk), seq, snapshot_jobs=lambda jobs: list(jobs.select_related("site")))


def latest_seq() -> int:
    return JobEvent.objects.aggregate(last=Max("id"))["last"] or 0


def _resume(jobs, seq, *, snapshot_jobs) -> ResumeReply:
    limit = settings.LAUNCHER_WS_RESUME_MAX_EVENTS
    last = latest_seq()
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or seq > last:
        return _snapshot(snapshot_jobs(jobs), last)
    missed = JobEvent.objects.filter(job__in=jobs, id__gt=seq)
    if missed.order_by("id")[limit:limit + 1].exists():  # more than `limit` events behind
        return _snapshot(snapshot_jobs(jobs), last)
    if seq == last:
        return ResumeReply(last=last)
    latest = dict(missed.values("job_id").annotate(seq=Max("id")).values_list("job_id", "seq"))
    changed = Job.objects.select_related("site").in_bulk(list(latest))
    updates = [events.job_message(changed[pk], latest[pk]) for pk in sorted(latest, key=latest.get) if pk in changed]
    return ResumeReply(updates=updates, last=last)


def _site_snapshot(site: Site) -> list[Job]:
    jobs = Job.objects.filter(site=site).select_related("site")
    active = list(jobs.filter(state__in=ACTIVE))
    recent = list(jobs.exclude(state__in=ACTIVE).order_by("-id")[:SNAPSHOT_RECENT_JOBS])
    return sorted(active + recent, key=lambda job: -job.pk)


def _snapshot(jobs: list[Job], last: int) -> ResumeReply:
    payload = [events.job_message(job, None)["job"] for job in jobs]
    return ResumeReply(snapshot={"type": "snapshot", "jobs": payload, "seq": last}, last=last)

