"""The overview's job list in Chromium (issue 17, item 4): names and submitters, search by name,
sortable columns, a new job's row filled in live, and "Terminate selected", at 1440x900 and 390x844.
Screenshots go to $LAUNCHER_TEST_OUTPUT/browser/."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import ROOT, shot
from tests.browser.test_dashboard import launch

pytestmark = pytest.mark.browser

SEED = """
from datetime import timedelta
from django.contrib.auth import get_user_model
from django.utils import timezone
from jobs.models import Job, JobEvent, Site
site = Site.objects.get(name="site-a")
alice = get_user_model().objects.get(username="alice")
now = timezone.now()
for job_id, name, state, ran in [("list-a1", "alpha brain-mri", "succeeded", 40), ("list-b2", "Beta CXR", "failed", 4000),
                                 ("list-c3", None, "succeeded", 400), ("list-d4", "delta queued", "queued", None)]:
    meta = {"job_id": job_id, **({"name": name} if name else {})}
    job = Job.objects.create(site=site, job_id=job_id, backend="process", state=state, job_meta=meta, submitted_by=alice)
    JobEvent.objects.create(job=job, from_state="", to_state=state, source="api")
    if ran is not None:
        Job.objects.filter(pk=job.pk).update(started_at=now - timedelta(seconds=ran + 10),
                                             finished_at=now - timedelta(seconds=10))
"""


@pytest.fixture(scope="module")
def seeded(server):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env.update(LAUNCHER_VAR_DIR=str(server["workspaces"].parent / "var"), DJANGO_SETTINGS_MODULE="launcher_site.settings",
               LAUNCHER_PROCESS_WORKSPACES=str(server["workspaces"]))
    done = subprocess.run([sys.executable, "manage.py", "shell", "-c", SEED], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    return server


def names(page):
    return page.locator('#jobs tbody [data-col="name"]').all_inner_texts()


@pytest.mark.parametrize("viewport, label", [((1440, 900), "desktop"), ((390, 844), "phone")])
def test_search_by_name_and_sort_columns(new_page, seeded, viewport, label):
    page = new_page(user="alice", viewport=viewport)
    page.goto("/sites/site-a/")
    search = page.get_by_label("Name or job id contains")
    search.fill("BRAIN")
    search.press("Enter")
    expect(page.locator("#jobs tbody tr")).to_have_count(1)
    row = page.locator("#jobs tbody tr")
    expect(row.locator('[data-col="name"]')).to_have_text("alpha brain-mri")
    expect(row.locator('[data-col="job_id"]')).to_have_text("list-a1")
    if label == "desktop":  # the phone hides study, submitter and created
        expect(row.locator('[data-col="submitter"]')).to_have_text("alice")
    shot(page, f"jobs-search-{label}")

    page.goto("/sites/site-a/?q=list-")
    page.get_by_role("link", name="Job", exact=True).click()
    expect(page.locator('th[aria-sort="ascending"]')).to_have_text(re.compile("Job"))
    assert names(page) == ["alpha brain-mri", "Beta CXR", "delta queued", "list-c3"]  # no name: the job id
    page.get_by_role("link", name="Duration").click()  # longest first
    expect(page.locator('th[aria-sort="descending"]')).to_have_text(re.compile("Duration"))
    assert names(page) == ["Beta CXR", "list-c3", "alpha brain-mri", "delta queued"]
    assert page.evaluate("document.documentElement.scrollWidth") <= viewport[0] + 1
    shot(page, f"jobs-sorted-{label}")


def test_a_new_job_row_gets_its_submitter_live_and_terminate_selected_asks_first(new_page, seeded):
    overview = new_page(user="alice", viewport=(1440, 900))
    overview.goto("/sites/site-a/")
    expect(overview.locator("#live")).to_have_text("live")
    job_id = f"listlive-{uuid.uuid4().hex[:8]}"
    launch(overview.context.new_page(), job_id, set_options="sleep=0.5", study="preset")
    row = overview.locator("#jobs tbody tr", has_text=job_id)
    expect(row.locator('[data-col="submitter"]')).to_have_text("alice")  # from the row fragment
    expect(row.locator('[data-col="study"]')).to_have_text("preset")
    expect(row.locator('[data-col="created"]')).to_have_text(re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d$"))
    expect(row).to_have_attribute("data-state", "succeeded", timeout=20000)
    expect(row.locator('input[name="job"]')).to_be_disabled()  # over: nothing to terminate

    button = overview.get_by_role("button", name="Terminate selected")
    expect(button).to_be_disabled()
    queued = overview.locator("#jobs tbody tr", has_text="list-d4")
    queued.get_by_role("checkbox").check()
    expect(overview.locator("#selected-count")).to_have_text("1 selected")
    button.click()
    expect(overview.locator("h1")).to_have_text("Terminate 1 job?")
    expect(overview.locator("#terminate-list")).to_contain_text("delta queued")
    shot(overview, "jobs-terminate-selected")
    overview.get_by_role("button", name="Terminate 1").click()
    expect(overview.get_by_role("status").filter(has_text="Termination of 1 job(s) requested.")).to_be_visible()
    expect(overview.locator("#jobs tbody tr", has_text="list-d4")).to_have_attribute("data-state", "aborted")
