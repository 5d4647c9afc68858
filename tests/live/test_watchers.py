"""Watchers in one process: the per-site lease, recording a job's life from the change stream,
and forwarding a running job's output lines."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer
from django.utils import timezone

from jobs import events
from jobs.models import Job, JobEvent, Site, WatcherLease
from jobs.services.launching import job_launch
from jobs.watchers import WatcherPool, lease_acquire, new_lines
from tests.live.conftest import job_state, queued_job, transitions
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]
LEASE = 3


@pytest.fixture
def pools():
    started: list[WatcherPool] = []

    def start() -> WatcherPool:
        pool = WatcherPool(lease_seconds=LEASE).start()
        started.append(pool)
        return pool

    yield start
    for pool in started:
        pool.stop()


def test_only_one_pool_watches_a_site_and_the_other_takes_over_when_it_stops(process_site, pools):
    first = pools()
    wait_until(lambda: first.watching() == {"site-1"}, timeout=10, message="first pool to watch site-1")
    second = pools()
    wait_until(lambda: second.syncs >= 3, timeout=15, message="second pool to try the lease three times")
    assert second.watching() == set() and first.watching() == {"site-1"}
    assert WatcherLease.objects.get(site=process_site).owner == first.owner

    first.stop()
    wait_until(lambda: second.watching() == {"site-1"}, timeout=LEASE + 2, message="second pool to take over")
    assert WatcherLease.objects.get(site=process_site).owner == second.owner


def test_an_expired_lease_is_taken_over_and_a_live_one_is_not(process_site):
    assert lease_acquire(site_pk=process_site.pk, owner="elsewhere:1:a", seconds=LEASE)
    assert not lease_acquire(site_pk=process_site.pk, owner="elsewhere:2:b", seconds=LEASE)
    WatcherLease.objects.filter(site=process_site).update(expires_at="2000-01-01T00:00:00Z")
    assert lease_acquire(site_pk=process_site.pk, owner="elsewhere:2:b", seconds=LEASE)


def test_a_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(process_site):
    import subprocess
    import sys

    from jobs.watchers import HOSTNAME

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_owner = f"{HOSTNAME}:{gone.stdout.strip()}:abc"
    assert lease_acquire(site_pk=process_site.pk, owner=dead_owner, seconds=60)
    assert lease_acquire(site_pk=process_site.pk, owner=f"{HOSTNAME}:1:new", seconds=LEASE)  # pid 1 is alive
    assert not lease_acquire(site_pk=process_site.pk, owner=f"{HOSTNAME}:999999999:x", seconds=LEASE)


def test_watcher_records_each_transition_once_from_the_stream(process_site, pools):
    pool = pools()
    wait_until(lambda: pool.watching() == {"site-1"}, timeout=10, message="watcher up")
    ok, ok_credentials = queued_job(process_site, "ok-1", "sleep=0.5")
    bad, bad_credentials = queued_job(process_site, "bad-1", "exit=3")
    job_launch(job_pk=ok.pk, credentials=ok_credentials)
    job_launch(job_pk=bad.pk, credentials=bad_credentials)
    wait_until(lambda: job_state(ok.pk) == "succeeded", timeout=20, message="ok-1 to succeed")
    wait_until(lambda: job_state(bad.pk) == "failed", timeout=20, message="bad-1 to fail")
    assert transitions(ok.pk) == [("", "queued"), ("queued", "starting"), ("starting", "running"),
                                  ("running", "succeeded")]
    assert transitions(bad.pk)[-1][1] == "failed"
    ok.refresh_from_db()
    bad.refresh_from_db()
    assert (ok.return_code, ok.exit_code) == (0, 0) and "fake job done" in ok.logs_tail
    assert (bad.return_code, bad.exit_code) == (1, 3)
    assert JobEvent.objects.filter(job=ok, to_state="succeeded", source="watcher").exists()
    # The finished workload is removed once its record is complete.
    workspace = process_site.process["workspace"]
    wait_until(lambda: not (Path(workspace) / ".launcher" / "site-1-ok-1.json").exists(),
               timeout=10, message="the finished workload to be removed")


@pytest.mark.asyncio
async def test_running_job_output_lines_reach_the_job_group(process_site, pools, settings):
    settings.LAUNCHER_LOG_FOLLOWERS = 5
    layer = get_channel_layer()
    pool = await sync_to_async(pools)()
    await sync_to_async(wait_until)(lambda: pool.watching() == {"site-1"}, timeout=10, message="watcher up")
    job, credentials = await sync_to_async(queued_job)(process_site, "talk-1", "sleep=4")
    channel = await layer.new_channel()
    await layer.group_add(events.job_group(job.pk), channel)
    await sync_to_async(job_launch)(job_pk=job.pk, credentials=credentials)
    lines: list[str] = []
    async with asyncio.timeout(15):
        while "fake job started" not in lines:
            message = await layer.receive(channel)
            if message["type"] == "job.log":
                assert message["job"] == job.pk
                lines += message["lines"]
    assert "<b>html in a log line</b>" in lines and "fake job done" not in lines  # live, before the end
    await layer.group_discard(events.job_group(job.pk), channel)


def test_new_lines_of_a_moving_tail():
    assert new_lines([], ["a", "b"]) == ["a", "b"]
    assert new_lines(["a", "b"], ["a", "b", "c"]) == ["c"]
    assert new_lines(["a", "b", "c"], ["b", "c", "d", "e"]) == ["d", "e"]
    assert new_lines(["a", "b"], ["a", "b"]) == []
    assert new_lines(["x", "x"], ["x", "x", "x"]) == ["x"]


def test_a_capped_tails_cut_note_does_not_resend_the_tail():
    """Once output passes the byte cap, each read starts with a different "[... N bytes cut]" note;
    the follower compares without it, so only the new lines go out."""
    from backends.logtail import without_cut_mark

    first = without_cut_mark(["[... 100 bytes cut]", "b", "c"])
    second = without_cut_mark(["[... 140 bytes cut]", "c", "d"])
    assert new_lines(first, second) == ["d"]
    assert without_cut_mark(["[... not a note", "x"]) == ["[... not a note", "x"]


def test_site_settings_change_restarts_its_watcher(process_site, pools):
    pool = pools()
    wait_until(lambda: pool.watching() == {"site-1"}, timeout=10, message="watcher up")
    _, first = pool.watchers[process_site.pk]
    Site.objects.filter(pk=process_site.pk).update(allowed_data_roots=["/tmp"], updated_at=timezone.now())
    wait_until(lambda: pool.watchers.get(process_site.pk, (None, first))[1] is not first, timeout=10,
               message="a new watcher for the changed site")
    wait_until(lambda: not first.is_alive(), timeout=10, message="the old watcher to stop")
    assert Job.objects.count() == 0
