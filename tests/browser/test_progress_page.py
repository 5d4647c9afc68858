"""Training progress live on the job page and the site's job list: a real process job replays a real
NVFlare client job's output (tests/fixtures/nvflare_logs/), the dashboard's log follower records the
round it trains, and the pages show it as text while it runs, without a reload."""

from __future__ import annotations

import re
import uuid

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot

pytestmark = pytest.mark.embedded
REPLAY = "nvflare_logs.replay_nvflare_log"  # importable from tests/fixtures, site-a's PYTHONPATH


def allow_replay(page) -> None:
    """Staff add the replay module to site-a's allowed job modules (a staff-only setting)."""
    site = page.request.get("/api/v1/sites/site-a/").json()
    modules = site["process"].get("allowed_modules") or []
    if REPLAY in modules:
        return
    csrf = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    answer = page.request.patch("/api/v1/sites/site-a/", headers={"X-CSRFToken": csrf, "Referer": page.url},
                                data={"process": {**site["process"], "allowed_modules": [*modules, REPLAY]}})
    assert answer.ok, answer.text()


def test_a_running_job_shows_its_round_live(server, new_page):
    release = server["workspaces"] / f"release-{uuid.uuid4().hex[:8]}"  # the replay holds before round 3
    allow_replay(new_page(user="sam"))
    overview = new_page(user="alice")
    overview.goto("/sites/site-a/")
    expect(overview.locator("#live")).to_have_text("live")
    page = overview.context.new_page()
    job_id = f"fl-{uuid.uuid4().hex[:8]}"
    page.goto("/sites/site-a/launch/")
    launch_replay(page, job_id, release)
    progress = page.locator("#job-progress")
    expect(progress).to_have_text("Round 2 of 3", timeout=60000)  # while it runs (held for up to 180 s)
    expect(page.locator("#job-state")).to_have_text("running")
    release.touch()
    expect(progress).to_have_text("Round 3 of 3", timeout=20000)
    row = overview.locator("#jobs tbody tr", has_text=job_id)
    expect(row.locator("[data-progress]")).to_have_text("round 3/3")
    expect(page.locator("#job-state")).to_have_text("succeeded", timeout=20000)
    expect(progress).to_have_text("Round 3 of 3")  # kept after the end
    page.reload()
    expect(progress).to_have_text("Round 3 of 3")
    shot(page, "job-progress")


def launch_replay(page, job_id: str, release) -> None:
    # The launch form of tests/browser/test_dashboard.py, with the replay module and its options.
    page.get_by_label("NVFlare job id").fill(job_id)
    page.locator("summary", has_text="Advanced").click()
    page.get_by_label("Job module (exe_module)").fill(REPLAY)
    page.get_by_label("--set options").fill(
        f"log=poc_sag_client_site1.log pace=0.02 linger=1 hold={release} hold_line=50")
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))

