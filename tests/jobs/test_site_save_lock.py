"""A site save waits on the engine (its checks, up to LAUNCHER_CHECK_DEADLINE_SECONDS) before its
transaction, never inside it: on SQLite an open transaction holds the write lock, so the watcher
recording a job's exit and every other save would wait on a slow docker_host. The slow engine is a
loopback port that accepts and never answers (as tests/jobs/test_limits.py)."""

from __future__ import annotations

import socket
import threading
import time

import pytest
from django.db import connections
from django.urls import reverse
from rest_framework.test import APIClient

from jobs.models import Job, JobState, Site
from jobs.services import catalog, connection_check
from jobs.services.lifecycle import job_create, job_observe, verdict
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]  # threads: own connections

DEADLINE = 6  # how long each save below waits on the silent engine
PROMPT = 3  # a write while that save's check is in progress finishes well before it


@pytest.fixture
def silent_engine():
    """(tcp://127.0.0.1:PORT, accepted connections): accepts and never answers, until the test ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    server.settimeout(0.1)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}", accepted
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()
    # The stuck checks see EOF and give their slots back.
    wait_until(lambda: connection_check._slots._value == connection_check.CHECK_SLOTS, timeout=30,
               message="every connection-check slot to be free again")


@pytest.fixture
def slow_site(db, silent_engine, tmp_path, settings):
    settings.LAUNCHER_CHECK_DEADLINE_SECONDS = DEADLINE
    return Site.objects.create(name="slow", backend="docker",
                               docker={"docker_host": silent_engine[0], "timeout": 30, "workspace": str(tmp_path)})


def _in_thread(call) -> tuple[threading.Thread, list]:
    out: list = []

    def run():
        try:
            out.append(call())
        finally:
            connections.close_all()  # this thread's connection

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _writes_while_checking(saving: threading.Thread, accepted: list, process_site) -> None:
    """Once the save's check is talking to the engine: the watcher records a job's exit and another
    site is saved, each at once, while that save is still waiting on the engine."""
    wait_until(lambda: accepted, timeout=10, message="the save's check to connect to the silent engine")
    started = time.monotonic()
    job = job_create(site=process_site, job_id="j-1", source="api", message="", backend="process")
    job_observe(job, verdict(JobState.FAILED, message="exited 1", return_code=1), source="watcher")
    catalog.site_update(site=process_site, allowed_data_roots=["/srv/other-data"])
    took = time.monotonic() - started
    assert took < PROMPT, f"the writes waited {took:.1f} s on the save's transaction"
    assert saving.is_alive(), "the writes only went through once the save had finished"
    assert Job.objects.get(pk=job.pk).state == JobState.FAILED
    assert Site.objects.get(pk=process_site.pk).allowed_data_roots == ["/srv/other-data"]


def test_an_api_save_checking_a_silent_engine_does_not_hold_the_database(slow_site, silent_engine, process_site,
                                                                           users):
    api = APIClient()
    api.force_login(users["staff"])
    settings_block = {**slow_site.docker, "network": "other-net"}
    saving, out = _in_thread(lambda: api.patch("/api/v1/sites/slow/", {"docker": settings_block}, format="json"))
    _writes_while_checking(saving, silent_engine[1], process_site)
    saving.join(DEADLINE + 20)
    response = out[0]
    assert response.status_code == 200, response.content
    assert any("could not check docker.network" in w for w in response.json()["warnings"])
    assert Site.objects.get(pk=slow_site.pk).docker["network"] == "other-net"  # saved, with the warning


def test_a_page_create_checking_a_silent_engine_does_not_hold_the_database(slow_site, silent_engine, process_site,
                                                                            users, client, tmp_path):
    client.force_login(users["staff"])
    form = client.get(reverse("site-settings", args=["slow"])).context["form"]  # a complete docker form
    data = {name: form[name].value() for name in form.fields if form[name].value() not in (None, False)}
    data = {k: ("on" if v is True else v) for k, v in data.items()}
    data["name"] = "slow-2"
    saving, out = _in_thread(lambda: client.post(reverse("site-create"), data))
    _writes_while_checking(saving, silent_engine[1], process_site)
    saving.join(DEADLINE + 20)
    assert out[0].status_code == 302, out[0].content.decode()[:2000]
    created = Site.objects.get(name="slow-2")
    assert created.docker["docker_host"] == silent_engine[0]
    assert "could not check docker.network" in client.get(out[0]["Location"]).content.decode()  # the warning shown
