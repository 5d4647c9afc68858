"""A real dashboard (`manage.py serve`, embedded: SQLite + in-process worker and watchers) on a free
loopback port, and headless Chromium driving it. Shared by the whole browser suite; every page is
checked for Content-Security-Policy violations and script errors."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.util import docker_client_or_skip, wait_until

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
PASSWORD = "browser-pw-123"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]

SETUP = """
import json, sys
from django.contrib.auth import get_user_model
from jobs.models import Job, JobEvent, Role, Site, SiteMembership
from jobs.services import catalog
ws, data, fixtures, password = sys.argv[-4:]
User = get_user_model()
alice = User.objects.create_user("alice", password=password)
bob = User.objects.create_user("bob", password=password)
sam = User.objects.create_user("sam", password=password, is_staff=True)  # platform staff: host-level settings
site_a = catalog.site_create(name="site-a", backend="process", allowed_data_roots=[data],
    process={"workspace": ws + "/site-a", "default_job_env": {"PYTHONPATH": fixtures},
             "allowed_modules": ["fake_nvflare_job"], "allow_root": True})  # pytest's tmp dirs are 0700
site_b = catalog.site_create(name="site-b", backend="process", process={"workspace": ws + "/site-b"})
site_c = catalog.site_create(name="site-c", backend="process", process={"workspace": ws + "/site-c"})
SiteMembership.objects.create(site=site_a, user=alice, role=Role.ADMIN)
SiteMembership.objects.create(site=site_c, user=alice, role=Role.VIEWER)
SiteMembership.objects.create(site=site_b, user=bob, role=Role.ADMIN)
preset = catalog.study_create(site=site_a, name="preset")
catalog.dataset_create(study=preset, name="train", source=data + "/cohort-a", mode="ro")
import os
os.makedirs(ws + "/site-d/startup", exist_ok=True); os.makedirs(ws + "/site-d/local", exist_ok=True)
os.makedirs(data + "/scans", exist_ok=True); os.makedirs(data + "/out", exist_ok=True); os.chmod(data + "/out", 0o777)
site_d = catalog.site_create(name="site-d", backend="docker", allowed_data_roots=[data],
    docker={"workspace": ws + "/site-d", "user": "1000:1000", "network": "nvflare-network"})
SiteMembership.objects.create(site=site_d, user=alice, role=Role.ADMIN)
imaging = catalog.study_create(site=site_d, name="imaging", image="launcher-test/fake-python:1")
catalog.dataset_create(study=imaging, name="scans", source=data + "/scans", mode="ro")
catalog.dataset_create(study=imaging, name="out", source=data + "/out", mode="rw")
b_job = Job.objects.create(site=site_b, job_id="b-secret-job", backend="process", image="b-secret-image")
JobEvent.objects.create(job=b_job, from_state="", to_state="queued", source="api")
print("SETUP" + json.dumps({"b_job": b_job.pk}))
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _output_dir() -> Path:
    path = Path(os.environ.get("LAUNCHER_TEST_OUTPUT", ROOT / "test-output")) / "browser"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def server(tmp_path_factory):
    base_dir = tmp_path_factory.mktemp("browser")
    workspaces, data = base_dir / "workspaces", base_dir / "data"
    for path in (workspaces / "site-a" / "startup", workspaces / "site-b", workspaces / "site-c", data / "cohort-a",
                 data / "imported"):
        path.mkdir(parents=True)
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env.update(LAUNCHER_VAR_DIR=str(base_dir / "var"), PORT=str(_free_port()), DJANGO_SETTINGS_MODULE="launcher_site.settings",
               LAUNCHER_PROCESS_WORKSPACES=str(workspaces))

    def manage(*args):
        done = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                              timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    manage("migrate", "--noinput")
    out = manage("shell", "-c", f"import sys; sys.argv += {[str(workspaces), str(data), str(FIXTURES), PASSWORD]!r}\n" + SETUP)
    ids = json.loads(out.split("SETUP", 1)[1])
    log = open(base_dir / "server.log", "w")
    proc = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{env['PORT']}"

    def up():
        assert proc.poll() is None, (base_dir / "server.log").read_text()
        try:
            return requests.get(f"{url}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_until(up, timeout=30, interval=0.2, message="the dashboard to answer /healthz")
        yield {"url": url, "data": data, "workspaces": workspaces, "log": base_dir / "server.log", **ids}
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


# Module, not session: while Playwright's sync API lives it keeps an event loop set as running on
# this thread, which breaks the asyncio tests collected after these.
@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


class Problems(list):
    """Console errors about the Content-Security-Policy and uncaught script errors."""


@pytest.fixture
def new_page(browser, server):
    contexts, problems = [], Problems()

    def make(*, user: str | None = None, viewport=(1280, 900)):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, base_url=server["url"])
        context.set_default_timeout(15000)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" and
                ("Content Security Policy" in m.text or "Content-Security-Policy" in m.text) else None)
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        if user:
            login(page, user)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not problems, problems


def login(page, user: str) -> None:
    page.goto("/accounts/login/")
    page.get_by_label("Username").fill(user)
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(lambda url: "/accounts/login/" not in url)


def shot(page, name: str) -> Path:
    path = _output_dir() / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path


@pytest.fixture
def docker_available():
    """Fails under `make test` (LAUNCHER_REQUIRE_DOCKER=1) when dockerd is missing; skips elsewhere."""
    docker_client_or_skip(timeout=5, images=False).close()
