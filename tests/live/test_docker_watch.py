"""The watcher against the real dockerd, through a Docker API proxy this test can cut and restore
(the shared dockerd itself is never stopped): the watcher reconnects, reconciles, and the job ends
in the right state exactly once. And a container removed by hand is lost within one reconcile."""

from __future__ import annotations

import contextlib
import uuid

import pytest
from docker.errors import APIError

from backends.base import LABEL_SITE
from jobs.models import Job, Site
from jobs.services.launching import job_launch
from jobs.services.reconciliation import site_reconcile
from jobs.watchers import SiteWatcher
from tests.docker_proxy import DOCKER_SOCKET, DockerProxy
from tests.live.conftest import docker_workspace, job_state, queued_job, transitions
from tests.util import docker_client_or_skip, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.django_db(transaction=True), pytest.mark.timeout(120)]
IMAGE = "launcher-test/fake-python:1"


@pytest.fixture
def daemon():
    return docker_client_or_skip(base_url=f"unix://{DOCKER_SOCKET}", timeout=20)  # with the test image built


@pytest.fixture
def proxy():
    p = DockerProxy().restore()  # on TCP: the site's docker_host
    yield p
    p.cut()


@pytest.fixture
def docker_site(daemon, tmp_path, proxy):
    name = f"live-{uuid.uuid4().hex[:8]}"
    workspace = docker_workspace(tmp_path / "ws")
    site = Site.objects.create(name=name, backend="docker", docker={
        "workspace": str(workspace), "docker_host": proxy.url, "timeout": 10,
        "default_job_env": {"FAKE_SLEEP": "60"}})
    yield site
    for container in daemon.containers.list(all=True, filters={"label": f"{LABEL_SITE}={name}"}):
        try:
            container.remove(force=True)
        except APIError as exc:  # 404/409: the watcher removed it, or is removing it right now
            if exc.status_code not in (404, 409):
                raise


def launched(site, job_id: str):
    job, credentials = queued_job(site, job_id)
    job.job_meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}}
    job.save(update_fields=["job_meta"])
    job_launch(job_pk=job.pk, credentials=credentials)
    job.refresh_from_db()
    assert job.handle, job.detail
    return job


@contextlib.contextmanager
def watching(site):
    """The site's watcher, streaming, for the block; stopped after it."""
    watcher = SiteWatcher(site.pk, site.name)
    watcher.start()
    try:
        wait_until(watcher.connected.is_set, timeout=20, message="the watcher to connect")
        yield watcher
    finally:
        watcher.stop.set()
        watcher.join(15)


def test_watcher_reconnects_after_the_daemon_connection_drops_and_records_the_missed_exit(docker_site, proxy, daemon):
    with watching(docker_site) as watcher:
        job = launched(docker_site, "dk-1")
        wait_until(lambda: job_state(job.pk) == "running", timeout=20, message="the job to run")

        proxy.cut()
        wait_until(lambda: not watcher.connected.is_set(), timeout=10, message="the watcher to notice")
        daemon.containers.get(job.handle["ref"]).kill()  # the job dies while nobody can see it
        wait_until(lambda: daemon.containers.get(job.handle["ref"]).status == "exited", timeout=20,
                   message="the container to exit")
        assert job_state(job.pk) == "running"

        proxy.restore()
        wait_until(lambda: job_state(job.pk) == "failed", timeout=45, message="the exit to be recorded")
        wait_until(lambda: watcher.connects >= 2 and watcher.connected.is_set(), timeout=10,
                   message="the watcher to be streaming again")
        # The exit's finisher saves the logs tail, then removes the container, off this thread: done
        # before the test's database is emptied (a late insert there deadlocks PostgreSQL's TRUNCATE).
        wait_until(lambda: not daemon.containers.list(all=True, filters={"name": job.handle["ref"]}), timeout=30,
                   message="the finisher to save the tail and remove the container")
    job.refresh_from_db()
    assert job.exit_code == 137 and job.return_code == 1
    changes = transitions(job.pk)
    assert len(changes) == len(set(changes)) and changes[-1] == ("running", "failed")


def test_exit_is_recorded_first_then_its_logs_tail_saved_then_the_container_removed(docker_site, daemon, settings):
    settings.LAUNCHER_LOG_FOLLOWERS = 0
    Site.objects.filter(pk=docker_site.pk).update(docker={**docker_site.docker, "default_job_env": {"FAKE_SLEEP": "1"}})
    with watching(docker_site):
        job = launched(docker_site, "dk-tail")
        wait_until(lambda: job_state(job.pk) == "succeeded", timeout=30, message="the exit to be recorded")
        wait_until(lambda: "FAKE-PYTHON ARGV" in Job.objects.get(pk=job.pk).logs_tail, timeout=20,
                   message="the logs tail to be saved")
        wait_until(lambda: not daemon.api.containers(all=True, filters={"name": job.handle["ref"]}), timeout=20,
                   message="the container to be removed")
    changes = transitions(job.pk)
    assert len(changes) == len(set(changes)) and changes[-1][1] == "succeeded"


def test_leftover_of_a_finished_job_gets_its_logs_tail_before_removal(docker_site, daemon):
    job = launched(docker_site, "dk-left")
    ref = job.handle["ref"]
    wait_until(lambda: "FAKE-PYTHON ARGV" in daemon.containers.get(ref).logs().decode(), timeout=20,
               message="the job to write its first lines")
    # The exit was recorded, then its recorder died before saving the tail and removing the container.
    Job.objects.filter(pk=job.pk).update(state="failed", return_code=1, logs_tail="")
    daemon.containers.get(ref).kill()
    wait_until(lambda: daemon.containers.get(ref).status == "exited", timeout=20, message="the container to exit")
    site_reconcile(site=docker_site)
    assert "FAKE-PYTHON ARGV" in Job.objects.get(pk=job.pk).logs_tail
    assert not daemon.api.containers(all=True, filters={"name": ref})


def test_container_removed_by_hand_is_lost_within_one_reconcile(docker_site, daemon):
    job = launched(docker_site, "dk-gone")
    daemon.containers.get(job.handle["ref"]).remove(force=True)
    site_reconcile(site=docker_site)
    job.refresh_from_db()
    assert (job.state, job.reason, job.return_code) == ("lost", "vanished", 9)
