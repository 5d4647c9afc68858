"""Denial-of-service limits: logs tails are byte-capped everywhere they are kept or served, the
logs API bounds `tail`, a connection test never holds a request past its deadline, and YAML from
users cannot expand (aliases) or nest without bound."""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest
from django.db import connections
from django.urls import reverse
from rest_framework.test import APIClient

from backends.base import Handle
from backends.logtail import cap_tail
from jobs.models import Job, Role, Site, SiteMembership, Study
from jobs.services import connection_check
from jobs.services.lifecycle import job_note
from jobs.services.sites import site_backend
from tests.util import wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

CAP = 256 * 1024
LINE_16K = "x" * 16 * 1024


def test_cap_tail_bounds_bytes_and_cuts_overlong_lines():
    text = "\n".join(f"{i:05d}" + LINE_16K for i in range(2000))
    capped = cap_tail(text, lines=10_000, max_bytes=CAP)
    assert len(capped.encode()) <= CAP
    assert capped.startswith("[... ") and capped.endswith("01999" + LINE_16K)  # the end is kept
    one = cap_tail("start" + "y" * 1_000_000 + "end", max_bytes=CAP)
    assert len(one.encode()) <= CAP and one.startswith("starty") and one.endswith("bytes cut]")
    assert cap_tail("a\nb\nc", lines=2) == "b\nc"  # short output unchanged apart from the line count


def test_a_job_printing_16k_lines_is_capped_live_saved_downloaded_and_in_the_api(client, users, process_site):
    job = Job.objects.create(site=process_site, backend="process", job_id="loud", state="running",
                             handle={"backend": "process", "ref": "loud-1"})
    backend = site_backend(process_site)
    os.makedirs(backend.state_dir, exist_ok=True)
    with open(os.path.join(backend.state_dir, "loud-1.log"), "w") as f:  # 32 MB of 16 KB lines
        for i in range(2000):
            f.write(f"line {i} {LINE_16K}\n")
    api = APIClient()
    api.force_login(users["viewer"])
    live = api.get(f"/api/v1/jobs/{job.pk}/logs/?tail=10000")
    assert live.status_code == 200 and live.json()["source"] == "live"
    assert len(live.content) <= CAP + 1024 and live.json()["logs"].endswith(f"line 1999 {LINE_16K}")
    client.force_login(users["viewer"])
    page = client.get(reverse("job-detail", args=[job.pk]))
    assert len(page.content) < CAP + 64 * 1024

    Job.objects.filter(pk=job.pk).update(state="failed")
    assert job_note(job.pk, source="watcher", logs_tail=backend.logs(Handle(**job.handle), tail=10_000))[1]
    saved = Job.objects.get(pk=job.pk).logs_tail
    assert 0 < len(saved.encode()) <= CAP and "line 1999" in saved
    Job.objects.filter(pk=job.pk).update(logs_tail="\n".join([LINE_16K] * 2000))  # a tail saved before the cap
    got = api.get(f"/api/v1/jobs/{job.pk}/logs/?tail=10000")
    assert got.json()["source"] == "saved" and len(got.content) <= CAP + 1024
    download = client.get(reverse("job-logs", args=[job.pk]))
    assert download.status_code == 200 and len(download.content) <= CAP


@pytest.mark.parametrize("tail", ["0", "10001", "many", "-5", "9" * 5000])
def test_the_logs_tail_parameter_is_bounded(process_site, users, tail):
    job = Job.objects.create(site=process_site, backend="process", job_id="j", state="failed", logs_tail="a\nb")
    api = APIClient()
    api.force_login(users["viewer"])
    response = api.get(f"/api/v1/jobs/{job.pk}/logs/", {"tail": tail})
    assert response.status_code == 400 and "tail" in response.json()


# ---------------------------------------------------------------------------------------------
# Connection tests against an engine that accepts and never answers
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def silent_server():
    """tcp://127.0.0.1:PORT that accepts connections and never answers, until the test ends."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(64)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept():
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"tcp://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()
    # The stuck checks see EOF and give their slots back.
    wait_until(lambda: connection_check._slots._value == connection_check.CHECK_SLOTS, timeout=30,
               message="every connection-check slot to be free again")


@pytest.fixture
def slow_docker_site(db, users, silent_server, tmp_path, settings):
    settings.LAUNCHER_CHECK_DEADLINE_SECONDS = 1
    site = Site.objects.create(name="slow", backend="docker",
                               docker={"docker_host": silent_server, "timeout": 40, "workspace": str(tmp_path)})
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    return site


def test_a_connection_test_to_a_silent_engine_answers_within_the_deadline(slow_docker_site, users, client):
    api = APIClient()
    api.force_login(users["owner"])
    started = time.monotonic()
    first = api.post("/api/v1/sites/slow/test/", {}, format="json")
    assert time.monotonic() - started < 5
    assert first.status_code == 200 and first.json()[0]["name"] == "deadline" and not first.json()[0]["ok"]

    results: list[list] = []

    def check() -> None:
        try:
            results.append(connection_check.site_check_connection(slow_docker_site))
        finally:
            connections.close_all()  # a request thread's connection goes back to the pool

    threads = [threading.Thread(target=check) for _ in range(8)]
    started = time.monotonic()
    for t in threads:
        t.start()
    assert client.get("/healthz").status_code == 200  # answered while the checks are stuck
    for t in threads:
        t.join(10)
    assert time.monotonic() - started < 5 and len(results) == 8
    names = sorted(r[0].name for r in results)
    assert names.count("busy") >= 7 and set(names) <= {"busy", "deadline"}  # 2 slots, one still held by `first`
    client.force_login(users["owner"])
    started = time.monotonic()
    page = client.post(reverse("site-check", args=["slow"]))
    assert time.monotonic() - started < 5 and page.status_code == 200
    assert "try again" in page.content.decode() or "no answer within" in page.content.decode()


def test_site_timeouts_are_bounded(db):
    from backends.base import InvalidJobSpec
    from backends.docker import DockerSiteConfig
    from backends.kubernetes import KubernetesSiteConfig

    with pytest.raises(InvalidJobSpec, match="<= 120"):
        DockerSiteConfig.from_dict({"timeout": 3600})
    with pytest.raises(InvalidJobSpec, match="at most 120"):
        KubernetesSiteConfig.from_dict({"request_timeout": 3600})


# ---------------------------------------------------------------------------------------------
# YAML from users
# ---------------------------------------------------------------------------------------------

BOMB = ("format_version: 2\nstudies:\n  s:\n    docker_kwargs:\n"
        "      a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
        "      b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n      c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\n"
        "      d: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\n      e: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\n"
        "      f: &f [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n      g: [*f, *f, *f, *f, *f, *f, *f, *f, *f]\n")


@pytest.fixture
def docker_site(db, users, tmp_path):
    site = Site.objects.create(name="dock", backend="docker", docker={"workspace": str(tmp_path)})
    SiteMembership.objects.create(site=site, user=users["owner"], role=Role.ADMIN)
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    return site


def test_a_yaml_alias_bomb_is_refused_at_once(docker_site, users, client):
    api = APIClient()
    api.force_login(users["owner"])
    started = time.monotonic()
    response = api.put("/api/v1/sites/dock/study-runtime/", BOMB, content_type="application/yaml")
    assert time.monotonic() - started < 1
    assert response.status_code == 400 and "aliases" in str(response.json())
    v1 = "cohort: &a {x: {source: /d, mode: ro}}\nother: *a\n"
    response = api.put("/api/v1/sites/dock/study-data/", v1, content_type="application/yaml")
    assert response.status_code == 400 and "aliases" in str(response.json())
    client.force_login(users["owner"])
    page = client.post(reverse("study-import", args=["dock"]), {"action": "preview", "text": v1})
    assert "aliases" in page.content.decode()
    assert not Study.objects.filter(site=docker_site).exists()
    deep = "format_version: 2\nstudies:\n  s:\n    docker_kwargs:\n      x: " + "[" * 200 + "]" * 200 + "\n"
    response = api.put("/api/v1/sites/dock/study-runtime/", deep, content_type="application/yaml")
    assert response.status_code == 400 and "nested deeper" in str(response.json())


def test_study_json_fields_are_bounded_in_the_study_files(docker_site, users):
    api = APIClient()
    api.force_login(users["owner"])
    labels = {f"k{i}": "v" * 100 for i in range(700)}  # 74 KB
    body = {"format_version": 2, "studies": {"s": {"docker_kwargs": {"labels": labels}}}}
    response = api.put("/api/v1/sites/dock/study-runtime/", body, format="json")
    assert response.status_code == 400 and "docker_kwargs is" in str(response.json())
    assert not Study.objects.filter(site=docker_site).exists()
