"""Layout, accessibility, time and theme (issue 17, items 8 and 9), in headless Chromium against the
shared dashboard server (tests/browser/conftest.py).

Every dashboard page, as platform staff, as a site admin and signed out, at 1440x900 and 390x844, in
the light and the dark theme (`prefers-color-scheme`): axe-core (axe-playwright-python carries it)
finds no serious or critical violation, and the page never scrolls sideways. A screenshot of each
goes to $LAUNCHER_TEST_OUTPUT/browser/a11y-*.png. Then: times in the browser's own zone with UTC on
hover, no "0s" durations, a visible focus ring, a favicon, the API docs linked, and the job page's
"Spec as launched" filled in live when a waiting job is finally launched.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import uuid

import pytest
import requests
from axe_playwright_python.sync_playwright import Axe
from playwright.sync_api import expect

from tests.browser.conftest import ROOT, login, shot
from tests.util import wait_until

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": (1440, 900), "phone": (390, 844)}
BLOCKING = ("serious", "critical")

# Jobs the pages show, written straight into the server's database (no launch needed): a finished
# one with a spec, events, logs and progress; a sub-second one; a queued one. And tokens, so the
# token tables have rows (with their Revoke links) when axe looks at them.
FIXTURE_JOBS = """
import json, sys
from datetime import timedelta
from django.utils import timezone
from jobs.models import Job, JobEvent, Site
site = Site.objects.get(name="site-a")
now = timezone.now()
done = Job.objects.create(site=site, job_id="a11y-done-" + sys.argv[-1], backend="process", study="preset",
    state="succeeded", return_code=0, exit_code=0, started_at=now - timedelta(minutes=5, seconds=3),
    finished_at=now - timedelta(minutes=2), logs_tail="2026-01-01 INFO round 1\\n2026-01-01 WARNING slow\\n",
    spec={"image": "", "argv": ["python", "-m", "fake_nvflare_job"], "env": {"A": "1"}},
    progress={"round": 1, "total_rounds": 2, "finished": True, "last_aggregation_at": (now - timedelta(minutes=2)).isoformat()})
for frm, to, msg in (("", "queued", "submitted"), ("queued", "starting", "launched"), ("starting", "running", ""),
                     ("running", "succeeded", "exit 0")):
    JobEvent.objects.create(job=done, from_state=frm, to_state=to, source="worker", message=msg)
quick = Job.objects.create(site=site, job_id="a11y-quick-" + sys.argv[-1], backend="process", state="succeeded",
    return_code=0, started_at=now - timedelta(seconds=30, milliseconds=400), finished_at=now - timedelta(seconds=30))
waiting = Job.objects.create(site=site, job_id="a11y-queued-" + sys.argv[-1], backend="process")
JobEvent.objects.create(job=waiting, from_state="", to_state="queued", source="api", message="submitted")
from django.contrib.auth import get_user_model
from jobs.services.tokens import token_create
alice = get_user_model().objects.get(username="alice")
used, _ = token_create(user=alice, name="a11y laptop with a rather long name for a phone screen")
used.last_used_at = now - timedelta(minutes=7); used.save()
token_create(site=site, name="a11y-fl-server", created_by=alice)
print("JOBS" + json.dumps({"done": done.pk, "quick": quick.pk, "queued": waiting.pk}))
"""

# A Docker site whose engine address is a loopback port nobody listens on: its jobs wait in
# "queued", retrying, until the address is fixed. No members (staff see it): the other browser
# tests check which sites alice sees.
SPEC_SITE = """
import json, os, sys
from jobs.services import catalog
from jobs.services.tokens import token_create
ws, data, address = sys.argv[-3:]
os.makedirs(ws + "/site-spec/startup", exist_ok=True); os.makedirs(ws + "/site-spec/local", exist_ok=True)
site = catalog.site_create(name="site-spec", backend="docker", allowed_data_roots=[data],
    docker={"workspace": ws + "/site-spec", "user": "1000:1000", "network": "nvflare-network", "timeout": 2})
site.docker = dict(site.docker, docker_host=address)
site.save()
_, secret = token_create(site=site, name="fl-server")
print("SPEC" + json.dumps({"token": secret}))
"""

SPEC_SITE_FIX = """
from jobs.models import Site
site = Site.objects.get(name="site-spec")
site.docker = {k: v for k, v in site.docker.items() if k != "docker_host"}
site.save()
"""


def manage_shell(server, code: str, *args: str) -> str:
    """Run `code` in `manage.py shell` against the server's own database (the conftest's settings)."""
    base = server["log"].parent
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env.update(LAUNCHER_VAR_DIR=str(base / "var"), DJANGO_SETTINGS_MODULE="launcher_site.settings",
               LAUNCHER_PROCESS_WORKSPACES=str(server["workspaces"]))
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", f"import sys; sys.argv += {list(args)!r}\n" + code],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.fixture(scope="module")
def jobs(server):
    out = manage_shell(server, FIXTURE_JOBS, uuid.uuid4().hex[:6])
    yield json.loads(out.split("JOBS", 1)[1])
    # The server is shared with the rest of the browser suite: leave site-a's job list as it was.
    manage_shell(server, "from jobs.models import Job; Job.objects.filter(job_id__startswith='a11y-').delete()")


@pytest.fixture
def open_page(browser, server):
    """open_page(user, viewport, scheme, timezone) -> a page in a fresh context; fails the test on any
    Content-Security-Policy violation or script error, as conftest.new_page does."""
    contexts, problems = [], []

    def make(user, viewport, scheme="light", timezone_id="UTC"):
        context = browser.new_context(viewport={"width": viewport[0], "height": viewport[1]}, base_url=server["url"],
                                      color_scheme=scheme, timezone_id=timezone_id)
        context.set_default_timeout(15000)
        contexts.append(context)
        page = context.new_page()
        page.on("console", lambda m: problems.append(m.text) if m.type == "error" and "Security Policy" in m.text
                else None)
        page.on("pageerror", lambda exc: problems.append(f"script error: {exc}"))
        if user:
            login(page, user)
        return page

    yield make
    for context in contexts:
        context.close()
    assert not problems, problems


def pages_for(user: str, jobs: dict) -> list[tuple[str, str]]:
    if user is None:
        return [("login", "/accounts/login/")]
    pages = [
        ("home", "/"),
        ("overview", "/sites/site-a/"),
        ("launch", "/sites/site-a/launch/"),
        ("history", "/sites/site-a/history/"),
        ("studies", "/sites/site-a/studies/"),
        ("study", "/sites/site-a/studies/preset/"),
        ("dataset", "/sites/site-a/studies/preset/datasets/train/"),
        ("settings", "/sites/site-a/settings/"),
        ("site-tokens", "/sites/site-a/tokens/"),
        ("my-tokens", "/tokens/"),
        ("job", f"/jobs/{jobs['done']}/"),
        ("job-queued", f"/jobs/{jobs['queued']}/"),
        ("audit", "/audit/"),
        ("not-found", "/jobs/987654321/"),
    ]
    if user == "sam":
        pages.append(("new-site", "/sites/new/"))
    return pages


def blocking(results) -> list[str]:
    found = []
    for v in results.response["violations"]:
        if v.get("impact") in BLOCKING:
            targets = [" ".join(map(str, n.get("target", []))) + ": " + (n.get("failureSummary") or "").replace("\n", " ")
                       for n in v["nodes"][:4]]
            found.append(f"{v['id']} ({v['impact']}): {v['help']} -> {targets}")
    return found


SIDEWAYS = """() => {
  const over = document.scrollingElement.scrollWidth - window.innerWidth;
  if (over <= 0) return null;
  const wide = [...document.querySelectorAll('body *')].filter((el) => el.getBoundingClientRect().right > window.innerWidth + 1)
    .slice(-3).map((el) => el.tagName.toLowerCase() + (el.id ? '#' + el.id : '') + (el.className && el.className.baseVal === undefined ? '.' + el.className : ''));
  return over + 'px too wide: ' + wide.join(', ');
}"""


@pytest.mark.parametrize("scheme", ["light", "dark"])
@pytest.mark.parametrize("width", list(WIDTHS))
@pytest.mark.parametrize("user", ["sam", "alice", None], ids=["staff", "site-admin", "signed-out"])
def test_every_page_passes_axe_and_never_scrolls_sideways(open_page, jobs, user, width, scheme):
    page = open_page(user, WIDTHS[width], scheme)
    axe, failures, checked = Axe(), [], 0
    for name, path in pages_for(user, jobs):
        response = page.goto(path)
        assert response.status == (404 if name == "not-found" else 200), (path, response.status)
        page.wait_for_load_state("load")
        page.evaluate("() => document.fonts.ready")
        over = page.evaluate(SIDEWAYS)
        if over:
            failures.append(f"{path} scrolls sideways: {over}")
        failures += [f"{path}: {problem}" for problem in blocking(axe.run(page))]
        shot(page, f"a11y-{user or 'anonymous'}-{name}-{width}-{scheme}")
        checked += 1
    assert not failures, f"{len(failures)} problem(s) on {checked} pages:\n" + "\n".join(failures)


@pytest.mark.parametrize("width", list(WIDTHS))
def test_row_actions_stay_on_screen_on_a_phone_and_desktop(open_page, width):
    """Revoke, Edit and Delete are reachable without sideways scrolling at both widths."""
    page = open_page("alice", WIDTHS[width])
    page.goto("/tokens/")
    page.get_by_label("Name").fill(f"phone-{uuid.uuid4().hex[:6]}")
    page.get_by_role("button", name="Create token").click()
    for path, name in (("/tokens/", "Revoke"), ("/sites/site-a/studies/preset/", "Edit"),
                       ("/sites/site-a/studies/preset/", "Delete")):
        page.goto(path)
        control = page.locator("button, a", has_text=re.compile(rf"^\s*{name}")).first
        expect(control).to_be_visible()
        box = control.bounding_box()
        assert box and box["x"] >= 0 and box["x"] + box["width"] <= WIDTHS[width][0], (path, name, box)


def contrast(page, selector: str) -> float:
    """The contrast ratio between the focus outline of `selector` (focused) and the page behind it."""
    return page.evaluate("""(sel) => {
      const el = document.querySelector(sel); el.focus();
      const parse = (c) => c.match(/[\\d.]+/g).slice(0, 3).map(Number);
      const lum = (rgb) => { const [r, g, b] = rgb.map((v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4); });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
      const ring = parse(getComputedStyle(el).outlineColor);
      const bg = parse(getComputedStyle(document.body).backgroundColor);
      const [hi, lo] = [lum(ring), lum(bg)].sort((a, b) => b - a);
      return (hi + 0.05) / (lo + 0.05);
    }""", selector)


@pytest.mark.parametrize("scheme", ["light", "dark"])
def test_focus_ring_favicon_and_api_docs_link(open_page, server, scheme):
    page = open_page("alice", WIDTHS["desktop"], scheme)
    page.goto("/sites/site-a/studies/")
    page.keyboard.press("Tab")  # the skip link
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.matches(':focus-visible')")
    ratio = contrast(page, "main a")
    assert ratio >= 3, f"focus ring contrast {ratio:.2f}:1 (WCAG 1.4.11 asks 3:1)"
    icon = page.locator('link[rel="icon"]')
    expect(icon).to_have_count(1)
    assert requests.get(server["url"] + icon.get_attribute("href"), timeout=5).status_code == 200
    docs = page.get_by_role("link", name=re.compile("API docs"))
    expect(docs).to_have_attribute("href", "/api/docs/")
    docs.click()
    expect(page).to_have_url(re.compile(r"/api/docs/$"))


def test_times_are_local_with_utc_on_hover_and_durations_are_never_0s(open_page, jobs):
    page = open_page("alice", WIDTHS["desktop"], timezone_id="Asia/Kolkata")  # UTC+05:30, no daylight saving
    page.goto(f"/jobs/{jobs['done']}/")
    finished = page.locator('[data-field="finished_at"] time')
    utc_title = finished.get_attribute("title")
    match = re.fullmatch(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC", utc_title or "")
    assert match, utc_title
    local = page.evaluate("""(utc) => { const d = new Date(utc.replace(' ', 'T') + 'Z');
      d.setMinutes(d.getMinutes() + 330); return d.toISOString().slice(0, 19).replace('T', ' '); }""", match.group(1))
    expect(finished).to_contain_text(local)
    expect(finished).to_contain_text(re.compile(r"\(\d+ min ago\)"))
    expect(page.locator("#job-duration")).to_have_text("3m 03s")
    first_event = page.locator("#timeline time").first
    assert (first_event.get_attribute("title") or "").endswith(" UTC")
    assert "UTC" not in first_event.inner_text()  # shown in the browser's zone, UTC only on hover

    page.goto(f"/jobs/{jobs['quick']}/")
    expect(page.locator("#job-duration")).to_have_text("<1s")

    page.goto(f"/jobs/{jobs['queued']}/")
    submitted = page.locator('[data-field="created_at"] time')
    expect(submitted).to_contain_text(re.compile(r"(\d+ s|\d+ min|just now)"))
    assert (submitted.get_attribute("title") or "").endswith(" UTC")

    page.goto("/tokens/")
    used = page.locator("#tokens tr", has_text="a11y laptop").locator('time[data-format="ago"]')
    expect(used).to_have_text(re.compile(r"^\d+ min ago$"))  # last used: relative, UTC on hover
    assert (used.get_attribute("title") or "").endswith(" UTC")
    expect(page.locator("#tokens thead")).not_to_contain_text("UTC")  # one label style: the zone is said once
    expect(page.locator("#tz-note")).to_contain_text(re.compile(r"Asia/(Kolkata|Calcutta)"))  # ICU may say either

    page.goto("/sites/site-a/")
    row = page.locator("#jobs tbody tr", has_text=jobs_label(jobs, "quick"))
    expect(row.locator('[data-col="duration"]')).to_have_text("<1s")
    queued = page.locator("#jobs tbody tr", has_text=jobs_label(jobs, "queued"))
    expect(queued.locator('[data-col="duration"]')).to_contain_text("queued")
    created = queued.locator('[data-col="created"] time')
    assert (created.get_attribute("title") or "").endswith(" UTC")
    shot(page, "a11y-times-overview-kolkata")


def jobs_label(jobs, key):  # the fixture's job ids share a random suffix
    return re.compile(rf"a11y-{key}-")


def test_spec_as_launched_appears_live_when_a_waiting_job_is_launched(open_page, server, docker_available):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"tcp://127.0.0.1:{s.getsockname()[1]}"
    out = manage_shell(server, SPEC_SITE, str(server["workspaces"]), str(server["data"]), dead)
    token = json.loads(out.split("SPEC", 1)[1])["token"]
    job_id = f"spec-{uuid.uuid4().hex[:8]}"
    args = {"exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
            "workspace": ["-m", "/var/tmp/nvflare/workspace"], "job_id": ["-n", job_id],
            "client_name": ["-c", "site-spec"], "parent_url": ["-p", "tcp://localhost:8004"],
            "parent_conn_sec": ["--parent_conn_sec", "clear"], "auth_token": ["-t", "tok-SECRET"]}
    body = {"site": "site-spec", "job_id": job_id, "job_args": args,
            "job_meta": {"job_id": job_id, "launcher_spec": {"default": {"docker": {"image": "launcher-test/fake-python:1"}}}}}
    answer = requests.post(server["url"] + "/api/v1/jobs/", json=body, headers={"Authorization": f"Token {token}"},
                           timeout=10)
    assert answer.status_code in (200, 201, 202), answer.text
    pk = answer.json()["id"]

    page = open_page("sam", WIDTHS["phone"])
    page.goto(f"/jobs/{pk}/")
    spec = page.locator("#job-spec")
    expect(spec).to_contain_text("Not launched yet.")
    expect(page.locator("#timeline")).to_contain_text("launch attempt 1", timeout=20000)  # it waits, retrying
    page.evaluate("() => { window.__notReloaded = true; }")
    manage_shell(server, SPEC_SITE_FIX)
    expect(spec.locator("pre.spec")).to_contain_text("launcher-test/fake-python:1", timeout=40000)
    expect(spec).not_to_contain_text("Not launched yet.")
    assert "tok-SECRET" not in spec.inner_text()  # the redacted spec, as the page renders it
    assert page.evaluate("() => window.__notReloaded") is True
    shot(page, "a11y-spec-live-phone")
    wait_until(lambda: requests.get(server["url"] + f"/api/v1/jobs/{pk}/", headers={"Authorization": f"Token {token}"},
                                    timeout=5).json()["state"] in ("succeeded", "failed"), timeout=30,
               message="the launched job to end")
