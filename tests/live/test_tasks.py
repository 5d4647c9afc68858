"""The Celery tasks, called as a worker would call them (never eager mode in the app): idempotent
under redelivery, re-checking the job first, retrying only errors that can go away."""

from __future__ import annotations


import pytest

from jobs.models import JobEvent, Site
from jobs.services.cancellation import job_request_terminate
from jobs.services.sealing import credentials_seal
from jobs.tasks import MAX_RETRIES, job_launch_task
from tests.live.conftest import docker_workspace, free_port, job_state, process_state, queued_job, transitions
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]


def test_redelivered_launch_starts_one_workload_and_records_once(process_site, workspace):
    job, credentials = queued_job(process_site, "twice-1", "sleep=2")
    job_launch_task(job.pk, credentials_seal(credentials))
    first = wait_until(lambda: process_state(workspace, "site-1-twice-1").get("runner_pid"), timeout=15,
                       message="the job to run")
    job_launch_task(job.pk, credentials_seal(credentials))  # acks_late: the same message again after a worker died
    assert process_state(workspace, "site-1-twice-1")["runner_pid"] == first
    assert JobEvent.objects.filter(job=job, to_state="starting").count() == 1
    assert transitions(job.pk)[:2] == [("", "queued"), ("queued", "starting")]


def test_launch_of_a_job_terminated_meanwhile_starts_nothing(process_site, workspace):
    job, credentials = queued_job(process_site, "late-1", "sleep=30")
    job_request_terminate(job=job, source="api", requested_by="operator")
    job_launch_task(job.pk, credentials_seal(credentials))
    assert job_state(job.pk) == "aborted"
    assert not (workspace / ".launcher" / "site-1-late-1.json").exists()


def test_permanent_error_fails_the_launch_without_retrying(process_site):
    job, credentials = queued_job(process_site, "bad-spec-1")
    job.job_meta = {"launcher_spec": {"site-1": {"process": {"privileged": True}}}}
    job.save(update_fields=["job_meta"])
    result = job_launch_task.apply(args=[job.pk, credentials_seal(credentials)])
    assert result.successful()
    job.refresh_from_db()
    assert (job.state, job.reason) == ("launch_failed", "InvalidSpec")
    assert JobEvent.objects.filter(job=job, to_state="launch_failed").count() == 1


def test_unreachable_daemon_is_retried_then_the_launch_fails(tmp_path):
    workspace = docker_workspace(tmp_path / "ws")
    site = Site.objects.create(name="site-down", backend="docker", docker={
        "workspace": str(workspace), "docker_host": f"tcp://127.0.0.1:{free_port()}", "timeout": 2})
    job, credentials = queued_job(site, "no-daemon-1")
    job.job_meta = {"launcher_spec": {"default": {"docker": {"image": "launcher-test/fake-python:1"}}}}
    job.save(update_fields=["job_meta"])
    # Executed in this process, retries included (countdowns are not waited for here).
    job_launch_task.apply(args=[job.pk, credentials_seal(credentials)])
    job.refresh_from_db()
    assert (job.state, job.reason) == ("launch_failed", "BackendUnavailable"), job.detail
    assert f"gave up after {MAX_RETRIES} retries" in job.detail
