"""The production layout's split, with real processes: a web process (`manage.py serve`) that
cannot reach Docker (its DOCKER_HOST names a socket that does not exist) and a Celery worker that
can, on a throwaway Redis. With LAUNCHER_ENGINE_VIA_WORKER the web's Test connection and a running
job's logs are answered by the worker; once the worker is gone they answer within the deadline,
saying so. Runs on the test database whichever it is (SQLite file or PostgreSQL): the processes
share it, so the test is transactional."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid

import pytest
import requests

from backends.base import LABEL_SITE
from jobs.models import Site
from jobs.services.launching import job_launch
from jobs.services.tokens import token_create
from tests.api.live import ROOT, LiveServer, database_url
from tests.live.conftest import RedisServer, docker_workspace, queued_job
from tests.util import docker_client_or_skip, skip_or_fail, wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.docker, pytest.mark.django_db(transaction=True),
              pytest.mark.timeout(240)]
IMAGE = "launcher-test/fake-python:1"
DEADLINE = 3
NO_DOCKER = "unix:///nonexistent/docker.sock"


@pytest.fixture
def daemon():
    return docker_client_or_skip(timeout=20)


@pytest.fixture
def redis(tmp_path):
    if shutil.which("redis-server") is None:
        skip_or_fail("redis-server is not installed (apt-get install redis-server)")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def docker_site(daemon, tmp_path):
    name = f"split-{uuid.uuid4().hex[:8]}"
    workspace = docker_workspace(tmp_path / "ws")
    site = Site.objects.create(name=name, backend="docker", docker={
        "workspace": str(workspace), "timeout": 10, "default_job_env": {"FAKE_SLEEP": "90"}})
    yield site
    for container in daemon.containers.list(all=True, filters={"label": f"{LABEL_SITE}={name}"}):
        container.remove(force=True)


class Worker:
    """`celery worker` against the test database and the given Redis, with the Docker socket."""

    def __init__(self, tmp_path, redis_url: str):
        env = {k: v for k, v in os.environ.items() if k not in ("DEBUG", "DOCKER_HOST", "LAUNCHER_REQUIRE_SERVICES")}
        env.update(DJANGO_SETTINGS_MODULE="launcher_site.settings", DATABASE_URL=database_url(), REDIS_URL=redis_url,
                   SECRET_KEY="live-worker-test-key", LAUNCHER_VAR_DIR=str(tmp_path / "worker-var"),
                   LAUNCHER_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1")
        self.log_path = tmp_path / "worker.log"
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "launcher_site", "worker", "--pool", "threads", "--concurrency", "2",
             "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning"],
            cwd=ROOT, env=env, stdout=self.log_path.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(20)

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]


def web(tmp_path, redis_url: str, *, via_worker: bool) -> LiveServer:
    return LiveServer(tmp_path, {"REDIS_URL": redis_url, "DOCKER_HOST": NO_DOCKER, "LAUNCHER_RUN_WATCHERS": "false",
                                 "LAUNCHER_ENGINE_VIA_WORKER": str(via_worker).lower(),
                                 "LAUNCHER_CHECK_DEADLINE_SECONDS": str(DEADLINE)})


def test_web_without_engine_access_gets_answers_from_the_worker_then_a_deadline(docker_site, redis, users, tmp_path):
    job, credentials = queued_job(docker_site, f"job-{uuid.uuid4().hex[:8]}")
    job.job_meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}}
    job.save(update_fields=["job_meta"])
    job_launch(job_pk=job.pk, credentials=credentials)  # here: this test process has the socket
    job.refresh_from_db()
    assert job.handle and job.state in ("starting", "running"), job.detail
    _, secret = token_create(user=users["staff"], name="script")
    auth = {"Authorization": f"Token {secret}"}

    # The control: this web process really cannot reach Docker by itself.
    alone = web(tmp_path, redis.url, via_worker=False)
    try:
        checks = {c["name"]: c for c in requests.post(f"{alone.url}/api/v1/sites/{docker_site.name}/test/",
                                                      headers=auth, json={}, timeout=30).json()}
        assert not checks["docker daemon"]["ok"] and "/nonexistent/docker.sock" in checks["docker daemon"]["detail"]
        assert requests.get(f"{alone.url}/api/v1/jobs/{job.pk}/logs/", headers=auth, timeout=30).status_code == 503
    finally:
        alone.stop()

    worker = Worker(tmp_path, redis.url)
    server = web(tmp_path, redis.url, via_worker=True)
    try:
        def checked():  # the first calls may come before the worker listens: those answer "deadline"
            answer = requests.post(f"{server.url}/api/v1/sites/{docker_site.name}/test/", headers=auth, json={},
                                   timeout=DEADLINE + 10)
            assert answer.status_code == 200, answer.text
            assert worker.proc.poll() is None, worker.output()
            return {c["name"]: c for c in answer.json() if c["name"] != "deadline"} or None

        checks = wait_until(checked, timeout=60, interval=0.2, message="Test connection answered by the worker")
        assert checks["docker daemon"]["ok"] and checks["docker daemon"]["detail"].startswith("Docker "), checks
        assert checks["network"]["ok"] and checks["job user"]["ok"], checks

        def live():
            body = requests.get(f"{server.url}/api/v1/jobs/{job.pk}/logs/", headers=auth, timeout=DEADLINE + 10).json()
            return body if "FAKE-PYTHON ARGV" in body.get("logs", "") else None

        assert wait_until(live, timeout=30, interval=0.2, message="the job's output via the worker")["source"] == "live"
        full = requests.get(f"{server.url}/api/v1/jobs/{job.pk}/logs/?full=1", headers=auth, timeout=DEADLINE + 10)
        assert full.status_code == 200 and "FAKE-PYTHON ARGV" in full.text

        worker.kill()
        reason = f"the worker did not answer within {DEADLINE} s"
        started = time.monotonic()
        answer = requests.post(f"{server.url}/api/v1/sites/{docker_site.name}/test/", headers=auth, json={},
                               timeout=DEADLINE + 10)
        assert answer.status_code == 200
        assert [c for c in answer.json() if c["name"] == "deadline" and reason in c["detail"]], answer.json()
        answer = requests.get(f"{server.url}/api/v1/jobs/{job.pk}/logs/", headers=auth, timeout=DEADLINE + 10)
        assert answer.status_code == 503 and reason in answer.json()["detail"], answer.text
        assert time.monotonic() - started < 2 * DEADLINE + 8
    finally:
        worker.kill()
        server.stop()
