"""Resource use of running jobs (jobs.services.usage): a real container and a real process job are
sampled by their log follower (jobs.watchers), the sample is stored through the lifecycle door and
pushed as a job.update; a container killed for memory ends with the reason OOMKilled; Kubernetes
shows its requests and limits only."""

from __future__ import annotations

import asyncio
import json
import uuid

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from backends.base import Handle, JobRequest, JobState, StudyRuntime
from backends.docker.observe import observation_from_container
from backends.docker.stats import cgroup_usage, usage_from_stats
from backends.kubernetes.pending import pod_observation
from backends.process import ProcessBackend, ProcessSiteConfig
from jobs import events
from jobs.models import Job, JobEvent, Site
from jobs.payloads import job_payload
from jobs.services.lifecycle import job_note, job_observe, verdict
from jobs.services.usage import (
    NOT_AVAILABLE,
    USAGE_FIELDS,
    UsageFeed,
    requested,
    usage_text,
)
from jobs.watchers import LogFollower
from tests.backends.conftest import (  # noqa: F401  (the real-daemon fixtures)
    IMAGE,
    docker_backend,
    docker_client,
    docker_data_root,
    docker_request,
    docker_site,
    docker_workspace,
    make_docker_backend,
)
from tests.conftest import client_job_args, process_settings
from tests.util import wait_until

pytestmark = pytest.mark.embedded
MiB = 1 << 20


def make_job(site: Site, job_id: str, **fields) -> Job:
    return Job.objects.create(site=site, job_id=job_id, backend=site.backend, state="running", **fields)


# ------------------------------------------------------------------ what was requested, the text


def test_requests_are_read_from_docker_and_kubernetes_specs():
    docker_spec = {"options": {"mem_limit": 2 << 30, "nano_cpus": 1_500_000_000,
                               "device_requests": [{"Count": 1, "Capabilities": [["gpu"]]}]}}
    assert requested(docker_spec) == {"gpus_requested": 1, "cpu_limit_cores": 1.5, "memory_limit_bytes": 2 << 30}
    pod = {"options": {"manifest": {"spec": {"containers": [{"name": "main", "resources": {
        "requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"memory": "2Gi", "nvidia.com/gpu": "2"}}}]}}}}
    assert requested(pod) == {"gpus_requested": 2, "cpu_limit_cores": 0.5, "memory_limit_bytes": 2 << 30}
    assert requested(None) == {"gpus_requested": None, "cpu_limit_cores": None, "memory_limit_bytes": None}


def test_usage_text_reads_as_the_issue_asks():
    usage = {"available": True, "cpu_cores": 1.2, "memory_bytes": 312 * MiB, "memory_limit_bytes": 2 << 30,
             "gpus_requested": 1}
    assert usage_text(usage) == "CPU 1.2 cores · memory 312 MiB of 2 GiB · GPUs requested: 1"
    assert usage_text({"available": False, "memory_limit_bytes": 2 << 30, "gpus_requested": 2}) == \
        "usage not available · memory limit 2 GiB · GPUs requested: 2"
    assert usage_text(None) == ""


def test_a_stats_document_maps_without_page_cache():
    raw = {"cpu_stats": {"cpu_usage": {"total_usage": 3_000_000_000}},
           "memory_stats": {"usage": 300 * MiB, "limit": 512 * MiB, "stats": {"inactive_file": 100 * MiB}}}
    assert usage_from_stats(raw) == {"cpu_seconds": 3.0, "memory_bytes": 200 * MiB, "memory_limit_bytes": 512 * MiB}
    assert usage_from_stats({}) is None
    assert cgroup_usage("no-such-container") is None


# ------------------------------------------------------------------ the lifecycle door


def test_a_sample_is_stored_and_pushed_only_while_running(process_site, django_capture_on_commit_callbacks):
    job = make_job(process_site, "u1")
    sample = {name: None for name in USAGE_FIELDS} | {"available": True, "memory_bytes": 5 * MiB}
    with django_capture_on_commit_callbacks(execute=False) as pushes:
        _, changed = job_note(job.pk, source="watcher", usage=sample)
        _, again = job_note(job.pk, source="watcher", usage=sample)  # unchanged: no write, no push
    assert (changed, again, len(pushes)) == (True, False, 1)
    job.refresh_from_db()
    assert job.usage["memory_bytes"] == 5 * MiB and JobEvent.objects.filter(job=job).count() == 0
    assert job_payload(Job.objects.select_related("site").get(pk=job.pk))["usage"]["memory_bytes"] == 5 * MiB
    job_observe(job.pk, verdict("succeeded", return_code=0), source="watcher")
    _, late = job_note(job.pk, source="watcher", usage=sample | {"memory_bytes": 9 * MiB})
    job.refresh_from_db()
    assert not late and job.usage["memory_bytes"] == 5 * MiB  # a sample after the exit is not kept


def test_sampling_off_records_nothing(process_site, settings):
    settings.LAUNCHER_RESOURCE_SAMPLE_SECONDS = 0
    job = make_job(process_site, "u-off")
    backend = ProcessBackend(site="site-1", config=ProcessSiteConfig.from_dict(process_site.process))
    assert UsageFeed(backend, job.pk, Handle("process", "x"), None).tick() is None


def test_kubernetes_shows_requests_only(process_site, settings):
    settings.LAUNCHER_RESOURCE_SAMPLE_SECONDS = 10

    class NoMetrics:  # the Kubernetes backend: it has no usage() (no metrics API in the stand-in)
        pass

    spec = {"options": {"pod": {"containers": [{"resources": {"limits": {"memory": "1Gi", "nvidia.com/gpu": 1}}}]}}}
    job = make_job(process_site, "k1", spec=spec)
    usage = UsageFeed(NoMetrics(), job.pk, Handle("kubernetes", "k1"), spec).tick()
    job.refresh_from_db()
    assert job.usage == usage and usage["available"] is False and usage["note"] == NOT_AVAILABLE
    assert usage_text(job.usage) == "usage not available · memory limit 1 GiB · GPUs requested: 1"


def test_kubernetes_oom_is_its_own_reason():
    pod = {"metadata": {"name": "p"}, "status": {"phase": "Failed", "containerStatuses": [
        {"name": "main", "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]}}
    observation = pod_observation(pod)
    assert observation.reason == "OOMKilled" and "out of memory" in observation.message


# ------------------------------------------------------------------ a real process job


def _process_job(site: Site, job_id: str, sleep: str = "20"):
    backend = ProcessBackend(site=site.name, config=ProcessSiteConfig.from_dict(site.process))
    job = make_job(site, job_id)
    request = JobRequest(site=site.name, job_pk=str(job.pk), job_id=job_id, job_args=client_job_args(job_id),
                         set_options=(f"sleep={sleep}",))
    handle = backend.launch(backend.prepare(request))
    wait_until(lambda: backend.inspect(handle).state is JobState.RUNNING, timeout=15, message="the job running")
    return backend, job, handle


@pytest.mark.django_db(transaction=True)
def test_a_real_process_job_is_sampled_by_its_follower(workspace, settings):
    settings.LAUNCHER_RESOURCE_SAMPLE_SECONDS = 0.2
    site = Site.objects.create(name="site-1", backend="process", process=process_settings(workspace))
    backend, job, handle = _process_job(site, "p1")
    follower = LogFollower(backend, job.pk, "site-1", handle, None)
    follower.start()
    try:
        def sampled():
            job.refresh_from_db()
            return job.usage and job.usage["cpu_cores"] is not None
        wait_until(sampled, timeout=15, message="a usage sample with CPU")
    finally:
        follower.stop.set()
        follower.join(5)
        backend.terminate(handle)
    # A python interpreter: several MiB resident, far below a GiB; the read itself is cheap.
    assert 2 * MiB < job.usage["memory_bytes"] < 1 << 30
    assert job.usage["available"] is True and 0 <= job.usage["cpu_cores"] < 4
    assert job.usage["cost_ms"] < 200 and job.usage["gpus_requested"] is None


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_a_sample_is_pushed_as_a_job_update(workspace, settings):
    settings.LAUNCHER_RESOURCE_SAMPLE_SECONDS = 10
    site = await Site.objects.acreate(name="site-1", backend="process", process=process_settings(workspace))
    backend, job, handle = await sync_to_async(_process_job)(site, "p2")
    try:
        layer = get_channel_layer()
        channel = await layer.new_channel()
        await layer.group_add(events.job_group(job.pk), channel)
        feed = UsageFeed(backend, job.pk, handle, None)
        await sync_to_async(feed.tick)()
        message = await asyncio.wait_for(layer.receive(channel), timeout=5)
    finally:
        await sync_to_async(backend.terminate)(handle)
    frame = json.loads(message["text"])
    assert (message["type"], frame["type"]) == ("job.update", "job.update")
    assert frame["job"]["usage"]["memory_bytes"] > 0 and frame["job"]["usage"]["available"] is True


# ------------------------------------------------------------------ real containers


@pytest.mark.django_db(transaction=True)
def test_a_real_container_is_sampled_and_shown(docker_backend, docker_request, settings, client,  # noqa: F811
                                               django_user_model):
    settings.LAUNCHER_RESOURCE_SAMPLE_SECONDS = 0.2
    meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}, "resource_spec": {"@default": {"memory": "64Mi"}}}
    spec = docker_backend.prepare(docker_request(job_meta=meta, env={"FAKE_SLEEP": "30"}))
    site = Site.objects.create(name="d-site", backend="docker", docker={"workspace": "/tmp"})
    job = make_job(site, spec.job_id, spec=spec.redacted())
    handle = docker_backend.launch(spec)
    follower = LogFollower(docker_backend, job.pk, "d-site", handle, job.spec)
    follower.start()
    try:
        def sampled():
            job.refresh_from_db()
            return job.usage and job.usage["cpu_cores"] is not None
        wait_until(sampled, timeout=20, message="a usage sample of the container")
    finally:
        follower.stop.set()
        follower.join(5)
    assert job.usage["memory_limit_bytes"] == 64 * MiB and 0 < job.usage["memory_bytes"] < 64 * MiB
    assert job.usage["cost_ms"] < 500  # the cgroup files, not the daemon's 1-2 s stats call
    user = django_user_model.objects.create_user("staffer", password="pw-x-12345", is_staff=True, is_superuser=True)
    client.force_login(user)
    page = client.get(f"/jobs/{job.pk}/").content.decode()
    assert "of 64 MiB · GPUs requested: 0" in page


@pytest.mark.django_db(transaction=True)
def test_an_oom_killed_container_ends_with_reason_oomkilled(docker_backend, docker_request):  # noqa: F811
    study = StudyRuntime(name="cancer", env={"FAKE_OOM": "1"}, docker_kwargs={"memswap_limit": 16 * MiB})
    meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}, "resource_spec": {"@default": {"memory": "16Mi"}}}
    spec = docker_backend.prepare(docker_request(job_meta=meta, study=study))
    site = Site.objects.create(name=f"oom-{uuid.uuid4().hex[:6]}", backend="docker", docker={"workspace": "/tmp"})
    job = Job.objects.create(site=site, job_id=spec.job_id, backend="docker")
    handle = docker_backend.launch(spec)
    observation = wait_until(lambda: (lambda o: o if o.state.is_terminal else None)(docker_backend.inspect(handle)),
                             timeout=30, message="the container's exit")
    job, _ = job_observe(job.pk, observation, source="watcher")
    assert (job.state, job.reason, job.exit_code) == ("failed", "OOMKilled", 137)
    assert "out of memory" in job.detail and "memory limit" in job.detail
    assert JobEvent.objects.filter(job=job, to_state="failed", message__contains="out of memory").exists()
    # The same from the inspect data alone (what reconcile sees).
    state = {"Status": "exited", "ExitCode": 137, "OOMKilled": True}
    assert observation_from_container({"Name": "/c", "State": state}).reason == "OOMKilled"
