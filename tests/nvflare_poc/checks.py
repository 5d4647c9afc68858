"""FLARE Launcher's side of a real NVFlare run: the jobs it recorded for one NVFlare job id, waited
on until terminal, and checked (state, NVFlare return code, events, a logs tail, no site token in
anything it saved)."""

from __future__ import annotations

from jobs.models import Job
from tests.nvflare_poc.poc import SITES
from tests.util import wait_until

TERMINAL = ("succeeded", "failed", "aborted", "launch_failed", "lost")


def launched(job_id: str) -> dict[str, Job]:
    """site name -> the job FLARE Launcher launched for that site (one per site, never two)."""
    jobs = list(Job.objects.filter(job_id=job_id).select_related("site"))
    by_site = {job.site.name: job for job in jobs}
    assert len(by_site) == len(jobs), f"two launches of {job_id} on one site: {jobs}"
    return by_site


def wait_terminal(job_id: str, sites=SITES, timeout: float = 60) -> dict[str, Job]:
    def done():
        jobs = launched(job_id)
        return jobs if set(sites) <= set(jobs) and all(jobs[s].state in TERMINAL for s in sites) else None

    return wait_until(done, timeout=timeout, interval=0.3,
                      message=f"FLARE Launcher's jobs for {job_id} on {', '.join(sites)} to end "
                              f"(now: { {s: j.state for s, j in launched(job_id).items()} })")


def wait_running(job_id: str, sites=SITES, timeout: float = 60) -> dict[str, Job]:
    def running():
        jobs = launched(job_id)
        return jobs if set(sites) <= set(jobs) and all(jobs[s].state == "running" for s in sites) else None

    return wait_until(running, timeout=timeout, interval=0.2, message=f"{job_id} to run on {', '.join(sites)}")


def check_records(job: Job, *, state: str, return_code: int | None, tokens: dict[str, str]) -> None:
    """One launched job: its end, an event per state change, a saved logs tail, no token anywhere."""
    where = f"{job.site.name} job {job.job_id}"
    assert (job.state, job.return_code) == (state, return_code), (
        f"{where}: {job.state} rc {job.return_code} (exit {job.exit_code}, {job.reason!r}: {job.detail[:300]!r})\n"
        f"{job.logs_tail[-2000:]}")
    events = list(job.events.order_by("at", "pk"))
    states = [e.to_state for e in events]
    assert events and states[-1] == state, f"{where}: events {[(e.from_state, e.to_state) for e in events]}"
    assert _in_order(["queued", "starting", "running", state], states), f"{where}: events went {states}"
    assert all(e.message.strip() for e in events), f"{where}: an event without a message: {states}"
    assert job.logs_tail.strip(), f"{where}: no logs tail saved"
    assert job.finished_at is not None
    check_no_tokens(job, tokens)


def check_no_tokens(job: Job, tokens: dict[str, str]) -> None:
    saved = [job.logs_tail, job.detail, job.reason, repr(job.job_args), repr(job.spec), repr(job.request),
             *(e.message for e in job.events.all())]
    for site, token in tokens.items():
        assert not any(token in text for text in saved), f"{site}'s token saved in {job.site.name} job {job.job_id}"


def _in_order(expected: list[str], seen: list[str]) -> bool:
    """`expected` is a subsequence of `seen` (states may repeat: several events per state)."""
    rest = iter(seen)
    return all(any(state == s for s in rest) for state in expected)
