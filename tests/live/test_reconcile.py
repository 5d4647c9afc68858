"""site_reconcile repairs drift without a watcher: missed exits, vanished workloads, workloads
with no job (kept, recorded as orphans) and launches whose record was lost."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from backends.base import JobRequest
from jobs.models import JobEvent, OrphanWorkload
from jobs.services.launching import job_launch
from jobs.services.reconciliation import site_reconcile
from jobs.services.sites import site_backend
from tests.conftest import client_job_args
from tests.live.conftest import job_state, process_state, queued_job, transitions
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]


def launched(site, job_id: str, *options: str):
    job, credentials = queued_job(site, job_id, *options)
    job_launch(job_pk=job.pk, credentials=credentials)
    job.refresh_from_db()
    return job


def exited(workspace: Path, ref: str) -> bool:
    return process_state(workspace, ref).get("exit_code") is not None


@pytest.mark.parametrize("options, state, exit_code, return_code", [
    (("sleep=1.5",), "succeeded", 0, 0),
    (("sleep=1.5", "exit=3"), "failed", 3, 1),
])
def test_missed_exit_is_recorded_with_its_exit_code(process_site, workspace, options, state, exit_code, return_code):
    job = launched(process_site, "missed-1", *options)
    before = job.state
    assert before in ("starting", "running")
    wait_until(lambda: exited(workspace, job.handle["ref"]), timeout=15, message="the job to exit")
    report = site_reconcile(site=process_site)
    job.refresh_from_db()
    assert (job.state, job.exit_code, job.return_code) == (state, exit_code, return_code)
    assert report.changed == [f"missed-1: {before} -> {state}"]
    assert JobEvent.objects.filter(job=job, to_state=state, source="reconcile").count() == 1
    assert "fake job done" in job.logs_tail
    # A second pass finds nothing to change.
    assert site_reconcile(site=process_site).changed == []


def test_workload_removed_by_hand_is_lost_within_one_reconcile(process_site, workspace):
    job = launched(process_site, "gone-1", "sleep=60")
    ref = job.handle["ref"]
    state = wait_until(lambda: process_state(workspace, ref).get("runner_pid") and process_state(workspace, ref),
                       timeout=15, message="the job to run")
    # Removed by hand: the process tree killed and its record deleted, as `docker rm -f` would.
    os.killpg(state["pid"], signal.SIGKILL)
    os.kill(state["runner_pid"], signal.SIGKILL)
    for suffix in (".json", ".log"):
        (workspace / ".launcher" / f"{ref}{suffix}").unlink(missing_ok=True)
    site_reconcile(site=process_site)
    job.refresh_from_db()
    assert (job.state, job.reason, job.return_code) == ("lost", "vanished", 9)
    assert JobEvent.objects.filter(job=job, to_state="lost", source="reconcile").count() == 1


def test_workload_with_no_job_is_recorded_as_orphan_and_never_deleted(process_site, workspace):
    backend = site_backend(process_site)
    request = JobRequest(site="site-1", job_pk="424242", job_id="stray-1", job_args=client_job_args("stray-1"),
                         set_options=("sleep=60",))
    handle = backend.launch(backend.prepare(request))
    try:
        wait_until(lambda: process_state(workspace, handle.ref).get("pid"), timeout=15, message="the stray to run")
        report = site_reconcile(site=process_site)
        assert report.orphans == [handle.ref]
        orphan = OrphanWorkload.objects.get(site=process_site)
        assert (orphan.ref, orphan.state) == (handle.ref, "running")
        site_reconcile(site=process_site)  # still there, still not touched
        assert OrphanWorkload.objects.filter(site=process_site).count() == 1
        assert backend.inspect(handle).state == "running"
    finally:
        backend.terminate(handle)
        backend.cleanup(handle)
    site_reconcile(site=process_site)
    assert not OrphanWorkload.objects.exists()  # gone from the backend -> gone from the list


def test_launch_whose_record_was_lost_is_adopted_and_not_started_again(process_site, workspace):
    job, credentials = queued_job(process_site, "adopt-1", "sleep=1")
    backend = site_backend(process_site)
    from jobs.services.requests import request_to_launch

    # A worker created the workload and died before recording it.
    handle = backend.launch(backend.prepare(request_to_launch(job, credentials=credentials)))
    wait_until(lambda: process_state(workspace, handle.ref).get("pid"), timeout=15, message="the job to run")
    pid = process_state(workspace, handle.ref)["pid"]
    report = site_reconcile(site=process_site)
    job.refresh_from_db()
    assert job.handle == {"backend": "process", "ref": handle.ref} and job.state == "running"
    assert any("adopted" in line for line in report.changed) and not report.orphans
    # The redelivered launch task finds the job launched and starts nothing.
    job_launch(job_pk=job.pk, credentials=credentials)
    assert process_state(workspace, handle.ref)["pid"] == pid
    wait_until(lambda: exited(workspace, handle.ref), timeout=15, message="the job to exit")
    site_reconcile(site=process_site)
    assert job_state(job.pk) == "succeeded"
    assert transitions(job.pk) == [("", "queued"), ("queued", "running"), ("running", "succeeded")]


def test_reconcile_is_scheduled_every_launcher_reconcile_seconds(settings):
    from launcher_site.celery import app

    app.loader.import_default_modules()
    app.finalize()
    entries = {e["task"]: e["schedule"] for e in app.conf.beat_schedule.values()}
    schedule = entries["jobs.tasks.sites_reconcile_task"]
    assert getattr(schedule, "total_seconds", lambda: schedule)() == settings.LAUNCHER_RECONCILE_SECONDS
