"""The job page's log viewer at desktop and phone widths: numbered lines, NVFlare levels and
tracebacks highlighted, an in-page search (count, highlight, filter), a wrap toggle, the whole
output loaded in the page and downloadable. Screenshots in test-output/browser/."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ROOT, shot

pytestmark = pytest.mark.browser

MAKE_JOB = """
from django.utils import timezone
from jobs.models import Job, JobEvent, JobLog, Site
site = Site.objects.get(name="site-a")
lines = []
for n in range(1, 301):
    level = {50: "WARNING", 100: "ERROR", 150: "DEBUG", 200: "CRITICAL"}.get(n, "INFO")
    lines.append(f"2026-12-06 21:00:00,000 - ClientRunner - {level} - round {n} " + ("wide" * 60 if n == 3 else ""))
lines += ["Traceback (most recent call last):", '  File "train.py", line 9, in <module>', "RuntimeError: boom"]
job = Job.objects.create(site=site, job_id="viewer-job", backend="process", state="failed", return_code=1,
                         started_at=timezone.now(), finished_at=timezone.now(), logs_tail="\\n".join(lines[-200:]))
JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api")
JobLog.objects.create(job=job, text="\\n".join(lines), size=len("\\n".join(lines)))
print("JOB", job.pk)
"""


@pytest.fixture(scope="module")
def job_pk(server):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env.update(LAUNCHER_VAR_DIR=str(server["log"].parent / "var"), DJANGO_SETTINGS_MODULE="launcher_site.settings",
               LAUNCHER_PROCESS_WORKSPACES=str(server["workspaces"]))
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", MAKE_JOB], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return int(done.stdout.split("JOB", 1)[1])


@pytest.mark.parametrize("width,height", [(1440, 900), (390, 844)])
def test_log_viewer_numbers_highlights_searches_and_wraps(new_page, job_pk, width, height):
    page = new_page(user="alice", viewport=(width, height))
    page.goto(f"/jobs/{job_pk}/")
    logs = page.locator("#logs")
    expect(logs.locator(".ll")).to_have_count(200)  # the saved tail first
    page.get_by_role("button", name="Show full log").click()
    expect(logs.locator(".ll")).to_have_count(303)
    expect(page.locator("#logs-note")).to_contain_text("303 lines")
    first = logs.locator(".ll").first
    assert page.evaluate("el => getComputedStyle(el, '::before').content", first.element_handle()) == '"1"'
    expect(logs.locator(".ll.lvl-error")).to_have_count(2)  # " - ERROR - " and the exception line
    expect(logs.locator(".ll.lvl-warning")).to_have_count(1)
    expect(logs.locator(".ll.lvl-critical")).to_have_count(1)
    expect(logs.locator(".ll.lvl-trace")).to_have_count(2)
    assert logs.locator(".ll.lvl-error").first.evaluate("el => getComputedStyle(el).color") != \
        logs.locator(".ll").first.evaluate("el => getComputedStyle(el).color")

    search = page.get_by_label("Search the log")
    search.fill("round 10")  # round 10, 100-109
    expect(page.locator("#log-count")).to_have_text("11 matching lines")
    expect(logs.locator("mark")).to_have_count(11)
    page.get_by_label("Only matching lines").check()
    expect(logs.locator(".ll:visible")).to_have_count(11)
    assert logs.locator(".ll.hit").nth(1).get_attribute("data-n") == "100"
    shot(page, f"log-viewer-search-{width}")
    page.get_by_label("Only matching lines").uncheck()
    search.fill("")
    expect(page.locator("#log-count")).to_have_text("")
    expect(logs.locator("mark")).to_have_count(0)

    # wrap on: the wide line 3 wraps inside the box; off: the box scrolls sideways, the page never
    assert logs.evaluate("el => el.scrollWidth <= el.clientWidth + 1")
    page.get_by_label("Wrap").uncheck()
    expect(logs).to_have_class("logs nowrap")
    assert logs.evaluate("el => el.scrollWidth > el.clientWidth")
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    shot(page, f"log-viewer-nowrap-{width}")

    with page.expect_download() as download:
        page.get_by_role("link", name="Download full log").click()
    text = open(download.value.path()).read()
    assert text.splitlines()[0].endswith("INFO - round 1 ") and text.rstrip("\n").endswith("RuntimeError: boom")
    assert len(text.splitlines()) == 303
