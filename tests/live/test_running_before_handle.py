"""A running job always has its handle. The watcher (a separate process in production) may see a
workload start before the launch task has saved what it launched: the observation names the
workload, so recording it running records its handle too, and the launch task's save that follows
keeps the job running. An observation of another workload carrying the job's label (a leftover of
an earlier launch) neither becomes the handle nor moves the state.

Driven in the order the race produces, with real workloads started by the real backends (dockerd,
and the process backend) and the observations their own watch streams deliver."""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid

import pytest
from docker.errors import APIError
from rest_framework.test import APIClient

from backends.base import LABEL_SITE, Handle, JobState
from jobs.models import Job, Site
from jobs.services.launching import job_launch, launch_record
from jobs.services.requests import request_to_launch
from jobs.services.sites import site_backend
from jobs.watchers import SiteWatcher
from tests import kube_api_server as kube
from tests.backends import kube_fixtures
from tests.backends.kube_fixtures import clock, kube_server, make_backend  # noqa: F401 - fixtures
from tests.live.conftest import docker_workspace, queued_job, transitions
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
IMAGE = "launcher-test/fake-python:1"


@pytest.fixture
def daemon():
    return docker_client_or_skip()


@pytest.fixture
def docker_site(daemon, tmp_path):
    name = f"rbh-{uuid.uuid4().hex[:8]}"
    site = Site.objects.create(name=name, backend="docker", docker={
        "workspace": str(docker_workspace(tmp_path / "ws")), "timeout": 10,
        "default_job_env": {"FAKE_SLEEP": "60"}})
    yield site
    for container in daemon.containers.list(all=True, filters={"label": f"{LABEL_SITE}={name}"}):
        try:
            container.remove(force=True)
        except APIError as exc:
            if exc.status_code not in (404, 409):
                raise


@pytest.fixture
def staff_api(users):
    client = APIClient()
    client.force_login(users["staff"])
    return client


@pytest.fixture
def watcher(request):
    """The site watcher's apply step (SiteWatcher._apply, as its stream lanes call it), with its log
    followers; they are stopped after the test."""
    made: list[SiteWatcher] = []

    def make(site) -> SiteWatcher:
        made.append(SiteWatcher(site.pk, site.name))
        return made[-1]
    yield make
    for w in made:
        w.followers.drop_all()


def submitted(site, job_id: str, *set_options: str, **meta):
    """A job as job_submit records it (with its workload name), and what its launch task prepares."""
    job, credentials = queued_job(site, job_id, *set_options)
    if meta:
        job.job_meta = meta
        job.save(update_fields=["job_meta"])
    backend = site_backend(site)
    spec = backend.prepare(request_to_launch(job, credentials=credentials))
    Job.objects.filter(pk=job.pk).update(workload=spec.name)
    return Job.objects.select_related("site").get(pk=job.pk), credentials, backend, spec


def streamed(backend, ref: str, state: JobState, *, since: int | None = None, timeout: float = 30):
    """The first observation of `ref` in `state` that the backend's own change stream delivers."""
    stop = threading.Event()
    timer = threading.Timer(timeout, stop.set)
    timer.start()
    try:
        for observation in backend.stream(stop, since=since):
            if observation.ref == ref and observation.kind == "state" and observation.state is state:
                return observation
    finally:
        stop.set()
        timer.cancel()
    raise AssertionError(f"the stream delivered no {state} observation of {ref} within {timeout} s")


def assert_running_with_handle(job_pk: int, backend: str, ref: str, staff_api, watcher_,
                               output: str = "FAKE-PYTHON ARGV") -> None:
    job = Job.objects.get(pk=job_pk)
    assert (job.state, job.handle) == ("running", {"backend": backend, "ref": ref}), (job.state, job.handle)
    assert job_pk in watcher_.followers.mine  # the log follower started with the running state
    def answered():
        answer = staff_api.get(f"/api/v1/jobs/{job_pk}/logs/?tail=50").json()
        return answer if output in answer["logs"] else None
    logs = wait_until(answered, timeout=20, message="the job's output in the logs API")
    assert logs["source"] == "live", logs


def assert_launch_save_keeps_running(job_pk: int, backend, spec, handle: Handle) -> None:
    """The launch task, finishing after the watcher, records its result: the job stays running."""
    job = launch_record(Job.objects.select_related("site").get(pk=job_pk), backend, spec, handle)
    assert job.state == "running" and job.handle == handle.as_dict(), (job.state, job.handle)
    job.refresh_from_db()
    assert job.state == "running" and job.handle == handle.as_dict() and job.spec and job.spec["name"] == spec.name
    assert transitions(job_pk) == [("", "queued"), ("queued", "running")], transitions(job_pk)


@pytest.mark.docker
def test_docker_start_seen_before_the_launch_saves_the_handle(docker_site, staff_api, watcher):
    job, credentials, backend, spec = submitted(
        docker_site, "rbh-1", launcher_spec={"default": {"docker": {"image": IMAGE}}})
    since = int(time.time()) - 1
    handle = backend.launch(spec)  # the launch task has started the container and not saved yet
    start = streamed(backend, spec.name, JobState.RUNNING, since=since)  # the container's `start` event
    w = watcher(docker_site)
    w._apply(start, backend)  # the watcher records it first
    assert_running_with_handle(job.pk, "docker", spec.name, staff_api, w)
    assert_launch_save_keeps_running(job.pk, backend, spec, handle)
    assert job_launch(job_pk=job.pk, credentials=credentials).state == "running"  # a redelivered launch: left alone
    assert transitions(job.pk) == [("", "queued"), ("queued", "running")]


@pytest.mark.embedded
def test_process_start_seen_before_the_launch_saves_the_handle(process_site, staff_api, watcher):
    job, _, backend, spec = submitted(process_site, "rbh-p1", "sleep=60")
    handle = backend.launch(spec)
    try:
        w = watcher(process_site)
        w._apply(streamed(backend, spec.name, JobState.RUNNING), backend)  # from the state files' scan
        assert_running_with_handle(job.pk, "process", spec.name, staff_api, w, output="fake job started")
        assert_launch_save_keeps_running(job.pk, backend, spec, handle)
    finally:
        backend.terminate(handle)


@pytest.mark.docker
def test_another_workload_with_the_jobs_label_is_never_adopted(docker_site, daemon, staff_api, watcher):
    job, _, backend, spec = submitted(
        docker_site, "rbh-2", launcher_spec={"default": {"docker": {"image": IMAGE}}})
    # A leftover of an earlier launch under another name, labelled as this job's (same pk and site).
    old = f"{spec.name}-old"
    stale = backend.launch(dataclasses.replace(spec, name=old, options={**spec.options, "name": old}))
    w = watcher(docker_site)
    w._apply(backend.inspect(stale), backend)
    job.refresh_from_db()
    assert (job.state, job.handle) == ("queued", None), (job.state, job.handle)

    handle = backend.launch(spec)
    w._apply(streamed(backend, spec.name, JobState.RUNNING, since=int(time.time()) - 5), backend)
    assert_running_with_handle(job.pk, "docker", spec.name, staff_api, w)
    assert_launch_save_keeps_running(job.pk, backend, spec, handle)

    since = int(time.time()) - 1
    daemon.containers.get(stale.ref).kill()  # the leftover ends, then is removed: neither is this job's
    w._apply(streamed(backend, stale.ref, JobState.FAILED, since=since), backend)
    backend.cleanup(stale)
    w._apply(streamed(backend, stale.ref, JobState.LOST, since=since), backend)
    job.refresh_from_db()
    assert (job.state, job.handle) == ("running", handle.as_dict()), (job.state, job.handle)
    assert transitions(job.pk) == [("", "queued"), ("queued", "running")]
    assert daemon.containers.get(spec.name).status == "running"


@pytest.mark.embedded
def test_kubernetes_running_pod_seen_before_the_launch_saves_the_handle(kube_server, make_backend, watcher):  # noqa: F811
    """The pod's Running phase from the real watch stream (against the loopback API server)."""
    backend = make_backend()
    site = Site.objects.create(name="site-k", backend="kubernetes", kubernetes={})
    job = Job.objects.get(pk=queued_job(site, kube_fixtures.JOB_ID)[0].pk)
    spec = backend.prepare(kube_fixtures.job_request(job_pk=str(job.pk)))
    Job.objects.filter(pk=job.pk).update(workload=spec.name)
    handle = backend.launch(spec)
    kube_server.set_status(spec.name, kube.running())
    w = watcher(site)
    w._apply(streamed(backend, spec.name, JobState.RUNNING), backend)
    job.refresh_from_db()
    assert (job.state, job.handle) == ("running", {"backend": "kubernetes", "ref": spec.name}), (job.state, job.handle)
    assert job.pk in w.followers.mine
    assert_launch_save_keeps_running(job.pk, backend, spec, handle)
