"""A launch waiting on an unreachable engine says why from its first failed attempt: a note on the
job's timeline and the job's reason/detail in the API (what the FL server reads), with the attempt
number and the next try; the final launch_failed names the engine's address and the attempts (104);
a relaunch after the retries were cut is noted. Real Celery worker (embedded), a Docker address on
loopback where nobody listens, and the loopback Kubernetes API stand-in."""

from __future__ import annotations

import re
import socket
from datetime import timedelta

import pytest
from django.core.cache import cache
from django.utils import timezone
from rest_framework.test import APIClient

from backends.base import BackendError, EngineUnreachable, Handle
from jobs.models import Job, JobEvent, Site
from jobs.services.sealing import credentials_seal
from jobs.services.submission import job_submit
from jobs.services.tokens import token_create
from tests.backends.kube_fixtures import backend, clock, kube_server, make_backend  # noqa: F401 - fixtures
from tests.util import wait_until

pytestmark = pytest.mark.embedded
IMAGE = "launcher-test/fake-python:1"
RAW = ("HTTPConnectionPool", "Max retries", "object at 0x", "NewConnectionError", "urllib3")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def docker_args(job_id: str) -> dict:
    return {
        "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
        "workspace": ["-m", "/var/tmp/nvflare/workspace"], "job_id": ["-n", job_id], "client_name": ["-c", "site-d"],
        "parent_url": ["-p", "tcp://localhost:8004"], "parent_conn_sec": ["--parent_conn_sec", "clear"],
        "auth_token": ["-t", "tok-SECRET"],
    }


def body(job_id: str) -> dict:
    return {"site": "site-d", "job_id": job_id, "job_args": docker_args(job_id),
            "job_meta": {"job_id": job_id, "launcher_spec": {"default": {"docker": {"image": IMAGE}}}}}


@pytest.fixture
def dead_docker_site(db, tmp_path):
    """A Docker site whose daemon address is a loopback port nobody listens on."""
    ws = tmp_path / "ws-d"
    for sub in ("startup", "local"):
        (ws / sub).mkdir(parents=True)
    address = f"tcp://127.0.0.1:{free_port()}"
    site = Site.objects.create(name="site-d", backend="docker", docker={
        "workspace": str(ws), "user": "1000:1000", "timeout": 2, "docker_host": address})
    return site, address


@pytest.fixture
def site_token():
    """site_token(site) -> an APIClient as that site's FL server (a site token)."""
    def make(site) -> APIClient:
        _, secret = token_create(site=site, name="fl-server")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        return client
    return make


def notes(job_pk: int) -> list[str]:
    return list(JobEvent.objects.filter(job_id=job_pk, from_state="queued", to_state="queued", source="worker")
                .order_by("id").values_list("message", flat=True))


@pytest.mark.django_db(transaction=True)  # the worker's threads use their own database connections
def test_an_unreachable_engine_is_said_from_the_first_attempt_and_the_failure_is_readable(
        dead_docker_site, site_token, settings):
    from launcher_site.embedded import embedded_worker

    settings.LAUNCHER_LAUNCH_RETRIES, settings.LAUNCHER_LAUNCH_RETRY_BACKOFF = 2, 2  # tries at 0, 2 and 6 s
    site, address = dead_docker_site
    client = site_token(site)  # the FL server's view
    with embedded_worker(concurrency=1):
        created = client.post("/api/v1/jobs/", body("dead-1"), format="json")
        assert created.status_code == 201, created.json()
        pk = created.json()["id"]
        # The first failed attempt is told at once, not after the retries (the second try is 2 s later).
        first = wait_until(lambda: notes(pk), timeout=10, message="the first failed attempt's note")[0]
        assert first.startswith("launch attempt 1 of 3 failed: ") and first.endswith("; next try in 2 s"), first
        assert f"Docker daemon at {address} is unreachable (connection refused)" in first
        assert not any(raw in first for raw in RAW), first
        # The same reason in the payload the FL server polls, and on the events it reads.
        job = client.get(f"/api/v1/jobs/{pk}/").json()
        assert job["state"] == "queued" and job["reason"] == "EngineUnreachable", job
        assert re.fullmatch(r"launch attempt [12] of 3 failed: .*; next try in [24] s", job["detail"]), job
        assert address in job["detail"]
        events = client.get(f"/api/v1/jobs/{pk}/events/").json()["results"]
        assert first in [e["message"] for e in events]
        done = wait_until(lambda: Job.objects.filter(pk=pk, state="launch_failed").first(), timeout=30,
                          message="launch_failed after the retries")
    assert notes(pk) == [first, first.replace("attempt 1", "attempt 2").replace("in 2 s", "in 4 s")]
    job = client.get(f"/api/v1/jobs/{pk}/").json()
    assert (job["state"], job["return_code"], job["reason"]) == ("launch_failed", 104, "BackendUnavailable")
    assert job["detail"].startswith("gave up after 2 retries (3 attempts in 6 s): "), job["detail"]
    assert f"Docker daemon at {address} is unreachable (connection refused)" in job["detail"]
    assert not any(raw in job["detail"] for raw in RAW), job["detail"]
    assert done.return_code == 104


@pytest.mark.django_db
def test_a_resubmit_during_the_retries_queues_nothing_and_a_relaunch_after_cut_retries_says_so(
        dead_docker_site, site_token, settings, django_capture_on_commit_callbacks):
    from jobs.tasks import job_launch_task

    settings.LAUNCHER_LAUNCH_RETRIES, settings.LAUNCHER_LAUNCH_RETRY_BACKOFF = 8, 2
    site, address = dead_docker_site
    client = site_token(site)
    with django_capture_on_commit_callbacks() as callbacks:  # its launch task is run by hand below
        job, _ = job_submit(site=site, job_id="dead-2", job_meta=body("dead-2")["job_meta"],
                            job_args=docker_args("dead-2"))
    assert len(callbacks) == 2  # the publish and the launch
    # One attempt, as a worker runs it: it fails, says so, and schedules its retry.
    with pytest.raises(EngineUnreachable):
        job_launch_task(job.pk, credentials_seal({"auth_token": ["-t", "tok-SECRET"]}))
    assert notes(job.pk) == [f"launch attempt 1 of 9 failed: cannot connect to Docker: Docker daemon at {address} "
                             "is unreachable (connection refused); next try in 2 s"]
    Job.objects.filter(pk=job.pk).update(
        created_at=timezone.now() - timedelta(seconds=settings.LAUNCHER_RELAUNCH_AFTER_SECONDS + 1))
    # The FL server re-submits while the retry is scheduled: no second launch, nothing to say.
    with django_capture_on_commit_callbacks() as callbacks:
        assert client.post("/api/v1/jobs/", body("dead-2"), format="json").status_code == 200
    assert callbacks == []
    assert client.get(f"/api/v1/jobs/{job.pk}/").json()["reason"] == "EngineUnreachable"
    # The process restarts (the retry state, and the scheduled retry, are gone): the next re-submit
    # launches it again and says why, on the timeline and in the payload.
    cache.clear()
    with django_capture_on_commit_callbacks() as callbacks:
        assert client.post("/api/v1/jobs/", body("dead-2"), format="json").status_code == 200
    assert len(callbacks) == 2  # the note's publish and the launch
    payload = client.get(f"/api/v1/jobs/{job.pk}/").json()
    assert (payload["state"], payload["reason"]) == ("queued", "Relaunched")
    assert payload["detail"] == (f"still queued more than {settings.LAUNCHER_RELAUNCH_AFTER_SECONDS} s after submit "
                                 "(its launch retries stopped: was the worker restarted?); launching it again on "
                                 "the FL server's re-submit")
    events = client.get(f"/api/v1/jobs/{job.pk}/events/").json()["results"]
    assert events[-1]["message"] == payload["detail"] and events[-1]["to_state"] == "queued"


def test_an_unreachable_kubernetes_api_is_named_with_its_address(kube_server, backend):  # noqa: F811
    kube_server.stop()
    with pytest.raises(BackendError) as err:
        backend.inspect(Handle("kubernetes", "gone"))
    assert isinstance(err.value, EngineUnreachable) and err.value.retryable
    message = str(err.value)
    assert re.fullmatch(r"cannot \w+ [\w/]+: Kubernetes API at https?://127\.0\.0\.1:\d+ is unreachable "
                        r"\(connection refused\)", message), message


@pytest.mark.django_db
def test_a_kubernetes_pending_reason_is_shown_while_starting_and_ends_with_the_wait(kube_server, backend):  # noqa: F811
    from jobs.payloads import job_payload
    from jobs.services.lifecycle import job_create, job_observe
    from tests import kube_api_server as kube
    from tests.backends.kube_fixtures import job_request

    spec = backend.prepare(job_request())
    handle = backend.launch(spec)
    site = Site.objects.create(name="site-k", backend="kubernetes", kubernetes={})
    job = job_create(site=site, job_id="pending-1", source="api", message="", backend="kubernetes",
                     workload=spec.name)
    job, _ = job_observe(job, backend.inspect(handle), source="watcher", launched=spec)
    assert job.state == "starting"
    shortage = "0/1 nodes are available: 1 Insufficient nvidia.com/gpu."
    kube_server.set_status(spec.name, kube.unscheduled(shortage))
    pending = backend.inspect(handle)
    assert pending.state.value == "starting" and pending.reason and shortage in pending.message
    # The same state again, with the scheduler's reason: a note, and the job's reason and detail.
    job, changed = job_observe(job, pending, source="watcher")
    assert changed and (job_payload(job)["reason"], job_payload(job)["detail"]) == (pending.reason, pending.message)
    assert JobEvent.objects.filter(job=job).order_by("id").last().message == pending.message
    assert job_observe(job, pending, source="watcher")[1] is False  # seen again: no second note
    kube_server.set_status(spec.name, kube.running())
    job, _ = job_observe(job, backend.inspect(handle), source="watcher")
    assert job.state == "running" and job.reason == "" and shortage not in job.detail
