"""What a reconnecting browser missed: the resume handshake of the websocket consumers.

Sequence numbers are JobEvent ids (one global sequence). A client that holds every change up to
`seq`, plus the later seqs it holds per job (`known`), gets one job.update per job changed since
then whose latest seq it does not hold (current payload, that job's latest seq), oldest change
first; when it is too far behind (or names a seq this database never issued) it gets one snapshot
instead.

Why per job and not just the highest seq seen: web, worker and watcher processes publish on their
own, so a higher seq can reach the browser before a lower one, and the lower one is lost if its
publisher dies. Resuming from the highest seq seen would skip it for good.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from django.conf import settings
from django.db.models import Max

from jobs.models import ACTIVE, Job, JobEvent, Site
from jobs.payloads import job_frame, job_payload

SNAPSHOT_RECENT_JOBS = 200  # a site snapshot holds every active job plus this many recent ones


@dataclass
class ResumeReply:
    """Either `updates` (job.update frames, jobs.payloads.job_frame, in order) or `snapshot` (a
    snapshot message: the jobs' payloads and the latest seq)."""

    updates: list[dict] = field(default_factory=list)
    snapshot: dict | None = None
    last: int = 0  # the latest seq when the question was asked: everything up to it is answered

    @property
    def messages(self) -> list[dict]:
        return [self.snapshot] if self.snapshot is not None else self.updates


def site_jobs_resume(*, site: Site, seq, known: Mapping[int, int] | None = None) -> ResumeReply:
    """The site's job changes after `seq` (see the module docstring). `known`: job pk -> the latest
    seq this client already has; those jobs are left out."""
    return _resume(Job.objects.filter(site=site), seq, known or {}, snapshot_jobs=lambda _jobs: _site_snapshot(site))


def job_resume(*, job: Job, seq, known: Mapping[int, int] | None = None) -> ResumeReply:
    """One job's change after `seq`, if any."""
    return _resume(Job.objects.filter(pk=job.pk), seq, known or {},
                   snapshot_jobs=lambda jobs: list(jobs.select_related("site")))


def site_jobs_missed(*, site: Site, since: int, until: int, known: Mapping[int, int], received: int = -1) -> ResumeReply:
    """For an open socket's periodic catch-up: the site's jobs changed in (since, until] whose latest
    change the socket has not been sent (`known`). `until` lags a heartbeat behind, so changes still
    on their way live are not taken for lost. `received`: how many distinct sequence numbers in that
    window reached the socket live; when that is every event of the window, one count answers (the
    usual case, and the cheap one: hundreds of sockets of a busy site do this every heartbeat).
    Never a snapshot."""
    return _missed(Job.objects.filter(site=site), since, until, known, received)


def job_missed(*, job: Job, since: int, until: int, known: Mapping[int, int], received: int = -1) -> ResumeReply:
    return _missed(Job.objects.filter(pk=job.pk), since, until, known, received)


def _missed(jobs, since: int, until: int, known: Mapping[int, int], received: int) -> ResumeReply:
    if JobEvent.objects.filter(job__in=jobs, id__gt=since, id__lte=until).count() == received:
        return ResumeReply(last=latest_seq())
    return ResumeReply(updates=_updates(jobs, since, known, until), last=latest_seq())


def held_seqs(raw) -> dict[int, int] | None:
    """The resume message's `jobs` ({"<job pk>": seq}) as a dict, or None when it is not one."""
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > settings.LAUNCHER_WS_RESUME_MAX_EVENTS:
        return None  # a page holding more changes than that is too far behind to resume anyway
    held = {}
    for key, seq in raw.items():
        if not (isinstance(key, str) and key.isdigit() and isinstance(seq, int)) or isinstance(seq, bool):
            return None
        held[int(key)] = seq
    return held


def latest_seq() -> int:
    return JobEvent.objects.aggregate(last=Max("id"))["last"] or 0


def _resume(jobs, seq, known: Mapping[int, int], *, snapshot_jobs) -> ResumeReply:
    limit = settings.LAUNCHER_WS_RESUME_MAX_EVENTS
    last = latest_seq()
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 0 or seq > last:
        return _snapshot(snapshot_jobs(jobs), last)
    missed = JobEvent.objects.filter(job__in=jobs, id__gt=seq)
    if missed.order_by("id")[limit:limit + 1].exists():  # more than `limit` events behind
        return _snapshot(snapshot_jobs(jobs), last)
    if seq == last:
        return ResumeReply(last=last)
    return ResumeReply(updates=_updates(jobs, seq, known), last=last)


def _updates(jobs, since: int, known: Mapping[int, int], until: int | None = None) -> list[dict]:
    """One job.update per job changed after `since` (up to `until`) and not yet known at its latest
    seq, oldest first. The payload is the job as it is now, with the latest seq in the window."""
    events = JobEvent.objects.filter(job__in=jobs, id__gt=since)
    if until is not None:
        events = events.filter(id__lte=until)
    latest = dict(events.values("job_id").annotate(seq=Max("id")).values_list("job_id", "seq"))
    latest = {pk: seq for pk, seq in latest.items() if known.get(pk, 0) < seq}
    if not latest:
        return []
    changed = sorted(Job.objects.select_related("site").filter(pk__in=list(latest)), key=lambda job: latest[job.pk])
    return [job_frame(job, latest[job.pk]) for job in changed]


def _site_snapshot(site: Site) -> list[Job]:
    jobs = Job.objects.filter(site=site).select_related("site")
    active = list(jobs.filter(state__in=ACTIVE))
    recent = list(jobs.exclude(state__in=ACTIVE).order_by("-id")[:SNAPSHOT_RECENT_JOBS])
    return sorted(active + recent, key=lambda job: -job.pk)


def _snapshot(jobs: list[Job], last: int) -> ResumeReply:
    snapshot = {"type": "snapshot", "jobs": [job_payload(job) for job in jobs], "seq": last}
    return ResumeReply(snapshot=snapshot, last=last)
