"""LAUNCHER_ENGINE_VIA_WORKER in one process: the web's engine calls (Test connection, a running
job's logs, a submit's host checks) run on a Celery worker (here the embedded one, on this process's
broker), and with no worker they answer within the deadline, saying why, instead of hanging or
failing with a 500.

The multi-process proof (a web process that cannot reach Docker at all) is
tests/live/test_engine_via_worker_processes.py."""

from __future__ import annotations

import threading
import time
import uuid

import pytest
from celery.signals import task_postrun, task_prerun
from django.test import Client
from django.urls import reverse
from rest_framework.test import APIClient

from backends.base import LABEL_SITE
from jobs.models import Dataset, Job, Site, Study
from jobs.services.launching import job_launch
from jobs.services.tokens import token_create
from launcher_site.embedded import embedded_worker
from tests.conftest import client_job_args
from tests.live.conftest import docker_workspace, queued_job
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.docker, pytest.mark.django_db(transaction=True),
              pytest.mark.timeout(120)]
IMAGE = "launcher-test/fake-python:1"
SUBMIT_CHECK = "jobs.tasks.submit_check_task"
ENGINE_TASKS = {"jobs.tasks.site_check_task", "jobs.tasks.workload_output_task", SUBMIT_CHECK}


@pytest.fixture
def daemon():
    return docker_client_or_skip(timeout=20)


@pytest.fixture
def docker_site(daemon, tmp_path):
    name = f"via-{uuid.uuid4().hex[:8]}"
    workspace = docker_workspace(tmp_path / "ws")
    site = Site.objects.create(name=name, backend="docker", docker={
        "workspace": str(workspace), "timeout": 10, "default_job_env": {"FAKE_SLEEP": "60"}})
    yield site
    for container in daemon.containers.list(all=True, filters={"label": f"{LABEL_SITE}={name}"}):
        container.remove(force=True)


@pytest.fixture
def staff_api(users):
    _, secret = token_create(user=users["staff"], name="script")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
    return client


@pytest.fixture
def engine_threads():
    """The thread each engine task ran in, by task name."""
    seen: dict[str, str] = {}

    def record(sender=None, **kwargs):
        if sender.name in ENGINE_TASKS:
            seen[sender.name] = threading.current_thread().name

    task_prerun.connect(record, weak=False)
    yield seen
    task_prerun.disconnect(record)


def running_job(site) -> Job:
    job, credentials = queued_job(site, f"job-{uuid.uuid4().hex[:8]}")
    job.job_meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}}
    job.save(update_fields=["job_meta"])
    job_launch(job_pk=job.pk, credentials=credentials)
    job.refresh_from_db()
    assert job.handle, job.detail
    return job


def test_test_connection_and_running_logs_run_on_the_worker(docker_site, staff_api, users, settings, engine_threads):
    settings.LAUNCHER_ENGINE_VIA_WORKER = True
    job = running_job(docker_site)
    with embedded_worker(concurrency=2):
        response = staff_api.post(f"/api/v1/sites/{docker_site.name}/test/", {}, format="json")
        assert response.status_code == 200, response.content
        checks = {c["name"]: c for c in response.json()}
        assert checks["docker daemon"]["ok"], checks
        assert checks["network"]["ok"], checks
        assert checks["job user"]["ok"], checks  # read from the workspace where the worker runs
        assert "deadline" not in checks
        assert engine_threads["jobs.tasks.site_check_task"] != threading.current_thread().name

        # A save's checks go the same way: what the worker finds refuses the save, naming the setting.
        response = staff_api.patch(f"/api/v1/sites/{docker_site.name}/",
                                   {"docker": {**docker_site.docker, "network": "no-such-network"}}, format="json")
        assert response.status_code == 400 and "docker.network" in response.json(), response.content
        docker_site.refresh_from_db()
        assert "network" not in docker_site.docker

        logs = wait_until(lambda: _live_logs(staff_api, job), timeout=30, message="the job's first output")
        assert logs["source"] == "live"
        assert engine_threads["jobs.tasks.workload_output_task"] != threading.current_thread().name

        full = staff_api.get(f"/api/v1/jobs/{job.pk}/logs/?full=1")
        assert full.status_code == 200 and b"FAKE-PYTHON ARGV" in full.content

        page = Client()
        page.force_login(users["staff"])
        html = page.get(reverse("job-detail", kwargs={"pk": job.pk})).content.decode()
        assert "FAKE-PYTHON ARGV" in html


def _live_logs(client, job):
    body = client.get(f"/api/v1/jobs/{job.pk}/logs/").json()
    return body if "FAKE-PYTHON ARGV" in body.get("logs", "") else None


def test_no_worker_answers_within_the_deadline_saying_why(docker_site, staff_api, users, settings):
    settings.LAUNCHER_ENGINE_VIA_WORKER = True
    settings.LAUNCHER_CHECK_DEADLINE_SECONDS = 1
    # A running job as the database records it: with no worker, nothing reads the engine at all.
    job = Job.objects.create(site=docker_site, job_id="no-worker", backend="docker", state="running",
                             handle={"backend": "docker", "ref": f"flare-{uuid.uuid4().hex[:8]}"})
    reason = "the worker did not answer within 1 s"

    started = time.monotonic()
    response = staff_api.post(f"/api/v1/sites/{docker_site.name}/test/", {}, format="json")
    assert response.status_code == 200, response.content
    deadline = [c for c in response.json() if c["name"] == "deadline"]
    assert deadline and reason in deadline[0]["detail"] and not deadline[0]["ok"], response.json()
    assert "docker daemon" not in {c["name"] for c in response.json()}  # nothing claims the engine was checked

    response = staff_api.get(f"/api/v1/jobs/{job.pk}/logs/")
    assert response.status_code == 503 and reason in response.json()["detail"], response.content
    response = staff_api.get(f"/api/v1/jobs/{job.pk}/logs/?full=1")
    assert response.status_code == 503 and reason in response.json()["detail"], response.content

    page = Client()
    page.force_login(users["staff"])
    response = page.get(reverse("job-detail", kwargs={"pk": job.pk}))
    assert response.status_code == 200 and f"(logs unavailable: {reason}" in response.content.decode()

    # A save checks the site too: the missing worker is a warning, never a refusal of the edit.
    response = staff_api.patch(f"/api/v1/sites/{docker_site.name}/", {"docker": {**docker_site.docker, "timeout": 20}},
                               format="json")
    assert response.status_code == 200, response.content
    assert any(reason in w for w in response.json()["warnings"]), response.json()
    docker_site.refresh_from_db()
    assert docker_site.docker["timeout"] == 20
    assert time.monotonic() - started < 5 * 1 + 10  # five calls, each bounded by the 1 s deadline (+ slack)


# -- a submit's host checks -------------------------------------------------------------------------


@pytest.fixture
def missing_on_the_worker():
    """Paths the worker's host lacks while this test thread (the web) has them, before and after:
    each is renamed away only while a worker runs a submit check."""
    paths: list = []

    def away(sender=None, **kwargs):
        if sender.name == SUBMIT_CHECK:
            for path in paths:
                path.rename(path.with_name(path.name + ".away"))

    def back(sender=None, **kwargs):
        if sender.name == SUBMIT_CHECK:
            for path in paths:
                path.with_name(path.name + ".away").rename(path)

    task_prerun.connect(away, weak=False)
    task_postrun.connect(back, weak=False)
    yield paths
    task_prerun.disconnect(away)
    task_postrun.disconnect(back)


def submit_body(site, job_id: str, study: str = "") -> dict:
    meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}, **({"study": study} if study else {})}
    return {"site": site.name, "job_id": job_id, "role": "client", "job_meta": meta,
            "job_args": client_job_args(job_id)}


def test_a_submit_is_checked_where_the_worker_is(docker_site, staff_api, settings, tmp_path, engine_threads,
                                                 missing_on_the_worker):
    settings.LAUNCHER_ENGINE_VIA_WORKER = True
    data = tmp_path / "data"
    (data / "images").mkdir(parents=True)
    docker_site.allowed_data_roots = [str(data)]
    docker_site.save()
    study = Study.objects.create(site=docker_site, name="trial")
    Dataset.objects.create(study=study, name="images", source=str(data / "images"), mode="ro")
    workspace = docker_site.docker["workspace"]

    with embedded_worker(concurrency=2):
        # Present here, absent where the worker runs: the worker's answer decides, naming the field.
        missing_on_the_worker[:] = [data / "images"]
        response = staff_api.post("/api/v1/jobs/", submit_body(docker_site, "ds-gone", "trial"), format="json")
        assert response.status_code == 400, response.content
        assert "does not exist" in response.json()["study.trial.datasets.images.source"][0], response.json()
        assert engine_threads.pop(SUBMIT_CHECK) != threading.current_thread().name

        missing_on_the_worker[:] = [tmp_path / "ws" / "startup"]
        response = staff_api.post("/api/v1/jobs/", submit_body(docker_site, "ws-broken"), format="json")
        assert response.status_code == 400, response.content
        assert f"{workspace}/startup" in response.json()["docker.workspace"][0], response.json()
        assert engine_threads.pop(SUBMIT_CHECK) != threading.current_thread().name
        assert not Job.objects.filter(site=docker_site).exists()

        # The same submit where the worker sees the paths: recorded, with what the worker's prepare found.
        missing_on_the_worker[:] = []
        response = staff_api.post("/api/v1/jobs/", submit_body(docker_site, "ds-here", "trial"), format="json")
        assert response.status_code == 201, response.content
        assert engine_threads.pop(SUBMIT_CHECK) != threading.current_thread().name
        job = Job.objects.get(site=docker_site, job_id="ds-here")
        assert (job.image, job.study, job.workload) == (IMAGE, "trial", f"{docker_site.name}-ds-here"), job
        assert "tok-SECRET" not in str(job.job_args) and "tok-SECRET" not in str(job.request)


def test_no_worker_a_submit_answers_503_and_records_nothing(docker_site, staff_api, users, settings):
    settings.LAUNCHER_ENGINE_VIA_WORKER = True
    settings.LAUNCHER_CHECK_DEADLINE_SECONDS = 1
    reason = "the worker did not answer within 1 s"

    response = staff_api.post("/api/v1/jobs/", submit_body(docker_site, "no-check"), format="json")
    assert response.status_code == 503 and reason in response.json()["detail"], response.content
    assert not Job.objects.filter(site=docker_site).exists()

    page = Client()
    page.force_login(users["staff"])
    response = page.post(reverse("job-launch", kwargs={"site": docker_site.name}), {
        "site": docker_site.name, "job_id": "no-check-form", "study": "", "image": IMAGE,
        "exe_module": "nvflare.private.fed.app.client.worker_process", "set_options": "", "options": "{}"})
    assert response.status_code == 200 and reason in response.content.decode(), response.content[-2000:]
    assert not Job.objects.filter(site=docker_site).exists()

    # The FL server's re-submit of a job already recorded still gets that job, worker or not.
    known = Job.objects.create(site=docker_site, job_id="known", backend="docker", state="running")
    response = staff_api.post("/api/v1/jobs/", submit_body(docker_site, "known"), format="json")
    assert response.status_code == 200 and response.json()["id"] == known.pk, response.content
    assert Job.objects.filter(site=docker_site).count() == 1
