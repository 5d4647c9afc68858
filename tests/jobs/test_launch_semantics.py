"""NVFlare 2.9 semantics of a launch: a launch that never started reports 104 INFRASTRUCTURE_ERROR (a
spec the launcher refuses stays 101), terminate before the workload exists cancels the launch for
good, and every timeline event says something. Real process backend and real dockerd."""

from __future__ import annotations

import json

import pytest

from backends.base import JobState, Observation
from jobs.models import Job, JobEvent, Site
from jobs.payloads import job_payload
from jobs.services.cancellation import job_request_terminate
from jobs.services.launching import job_launch
from jobs.services.lifecycle import job_observe
from jobs.services.reconciliation import site_reconcile
from jobs.services.sealing import credentials_seal
from jobs.services.sites import site_backend
from jobs.services.submission import job_submit
from tests.util import wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]
IMAGE = "launcher-test/fake-python:1"


def credentials_of(args):
    return {k: args[k] for k in ("auth_token", "auth_signature", "ssid")}


def docker_args(job_id: str) -> dict:
    return {
        "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
        "workspace": ["-m", "/var/tmp/nvflare/workspace"], "job_id": ["-n", job_id], "client_name": ["-c", "site-d"],
        "parent_url": ["-p", "tcp://localhost:8004"], "parent_conn_sec": ["--parent_conn_sec", "clear"],
        "auth_token": ["-t", "tok-SECRET"],
    }


@pytest.fixture
def docker_site(db, tmp_path):
    def make(**docker):
        ws = tmp_path / "ws-d"
        for sub in ("startup", "local"):
            (ws / sub).mkdir(parents=True, exist_ok=True)
        return Site.objects.create(name="site-d", backend="docker",
                                   docker={"workspace": str(ws), "user": "1000:1000", "timeout": 20, **docker})
    return make


def submit_docker(site, job_id, image=IMAGE):
    meta = {"job_id": job_id, "launcher_spec": {"default": {"docker": {"image": image}}}}
    job, _ = job_submit(site=site, job_id=job_id, job_meta=meta, job_args=docker_args(job_id))
    return job


# -- 104 INFRASTRUCTURE_ERROR -----------------------------------------------------------------------


@pytest.mark.docker
def test_a_missing_image_is_an_infrastructure_error_104_in_the_payload(docker_site):
    from tests.util import docker_client_or_skip

    docker_client_or_skip(timeout=10).close()
    job = submit_docker(docker_site(), "no-image", image="launcher-test/never-built:0")
    job = job_launch(job_pk=job.pk, credentials={"auth_token": ["-t", "tok-SECRET"]})
    assert (job.state, job.return_code, job.reason) == ("launch_failed", 104, "LaunchError")
    assert "never-built" in job.detail
    payload = job_payload(job)
    assert payload["state"] == "launch_failed" and payload["return_code"] == 104


def test_an_unreachable_engine_after_the_retries_is_104(docker_site):
    from jobs.tasks import MAX_RETRIES, job_launch_task

    job = submit_docker(docker_site(docker_host="unix:///nonexistent/docker.sock"), "no-engine")
    sealed = credentials_seal({"auth_token": ["-t", "tok-SECRET"]})
    job_launch_task.apply(args=[job.pk, sealed], retries=MAX_RETRIES)  # the last attempt, run here
    job.refresh_from_db()
    assert (job.state, job.return_code, job.reason) == ("launch_failed", 104, "BackendUnavailable")
    assert "unreachable" in job.detail


def test_a_spec_the_launcher_refuses_stays_101(process_site, job_args):
    args = job_args("bad-spec")
    job, _ = job_submit(site=process_site, job_id="bad-spec", job_meta={}, job_args=args)
    # the site's settings changed under the queued job: its module is no longer allowed
    from django.utils import timezone

    Site.objects.filter(pk=process_site.pk).update(process={**process_site.process, "allowed_modules": []},
                                                   updated_at=timezone.now())
    job = job_launch(job_pk=job.pk, credentials=credentials_of(args))
    assert (job.state, job.return_code, job.reason) == ("launch_failed", 101, "InvalidSpec")


# -- terminate before the workload exists -----------------------------------------------------------


def workloads(site):
    return [o for o in site_backend(site).list_managed()]


def test_terminating_a_queued_job_cancels_every_later_launch(process_site, job_args, django_capture_on_commit_callbacks):
    args = job_args("early")
    job, _ = job_submit(site=process_site, job_id="early", job_meta={}, job_args=args)
    job = job_request_terminate(job=job, requested_by="owner")
    assert (job.state, job.return_code) == ("aborted", 9)
    # the launch task delivered afterwards (or redelivered, or retried) starts nothing
    for _ in range(2):
        assert job_launch(job_pk=job.pk, credentials=credentials_of(args)).state == "aborted"
    # the FL server submitting the same (site, job_id) again gets the aborted job and queues nothing
    with django_capture_on_commit_callbacks() as callbacks:
        again, created = job_submit(site=process_site, job_id="early", job_meta={}, job_args=args)
    assert not created and again.pk == job.pk and again.state == "aborted" and callbacks == []
    assert workloads(process_site) == []
    assert not (process_site_workspace(process_site) / "early" / "job_record.json").exists()


def test_terminating_a_starting_job_before_its_workload_exists_stops_a_redelivered_launch(
        process_site, job_args, django_capture_on_commit_callbacks):
    args = job_args("mid")
    job, _ = job_submit(site=process_site, job_id="mid", job_meta={}, job_args=args)
    # a worker recorded the workload's name, then died before creating it
    job, _ = job_observe(job, Observation(ref=job.workload, state=JobState.STARTING, message="creating"), source="worker")
    with django_capture_on_commit_callbacks() as callbacks:  # the terminate task is queued, not yet run
        job = job_request_terminate(job=job)
    assert job.state == "starting" and job.terminate_requested_at and len(callbacks) >= 1
    job = job_launch(job_pk=job.pk, credentials=credentials_of(args))  # the launch, redelivered first
    assert (job.state, job.return_code) == ("aborted", 9)
    assert workloads(process_site) == []
    assert not (process_site_workspace(process_site) / "mid" / "job_record.json").exists()


def process_site_workspace(site):
    from pathlib import Path

    return Path(site.process["workspace"])


# -- events ----------------------------------------------------------------------------------------


def test_a_state_seen_without_a_message_still_gets_a_meaningful_event(process_site, job_args):
    job, _ = job_submit(site=process_site, job_id="quiet", job_meta={}, job_args=job_args("quiet"))
    # a watcher sees the workload before the worker records it: its observation carries no message
    job_observe(job, Observation(ref=job.workload, state=JobState.STARTING), source="watcher")
    job_observe(job, Observation(ref=job.workload, state=JobState.FAILED, return_code=1), source="watcher")
    messages = list(JobEvent.objects.filter(job=job).order_by("id").values_list("to_state", "message"))
    assert messages[1:] == [("starting", "workload starting"), ("failed", "failed (return code 1)")]
    assert all(message for _, message in messages)


def test_a_process_job_run_to_the_end_has_no_empty_event_and_a_fixed_path(process_site, job_args, monkeypatch):
    monkeypatch.setenv("PATH", f"/dashboard-only/bin:{__import__('os').environ['PATH']}")
    args = job_args("events")
    job, _ = job_submit(site=process_site, job_id="events", job_meta={}, job_args=args)
    job_launch(job_pk=job.pk, credentials=credentials_of(args))

    def ended():
        site_reconcile(site=job.site)
        job.refresh_from_db()
        return job.is_terminal

    wait_until(ended, timeout=15, interval=0.1, message="job end")
    events = list(JobEvent.objects.filter(job=job).values_list("to_state", "message"))
    assert job.state == "succeeded" and all(message.strip() for _, message in events), events
    record = json.loads((process_site_workspace(process_site) / "events" / "job_record.json").read_text())
    assert "/dashboard-only/bin" not in record["env"]["PATH"]


def test_the_process_backends_starting_observation_says_what_is_happening(process_site, job_args):
    backend = site_backend(process_site)
    state = {"labels": {}, "created_at": 1.0}
    observation = backend._observe("site-1-x", state)
    assert observation.state is JobState.STARTING and observation.message


def test_every_recorded_job_has_a_return_code_once_it_launch_failed(process_site):
    job = Job.objects.create(site=process_site, job_id="j-lf", backend="process")
    from jobs.services.lifecycle import verdict

    job_observe(job, verdict("launch_failed", reason="BrokerUnavailable"), source="api")
    job.refresh_from_db()
    assert job.return_code == 104 and job.detail == "launch failed (return code 104): BrokerUnavailable"
