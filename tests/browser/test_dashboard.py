"""The dashboard in headless Chromium against a real server process on the process backend.

Every test fails on any CSP violation or script error on its pages (see conftest.new_page) and
saves a screenshot into $LAUNCHER_TEST_OUTPUT/browser/.
"""

from __future__ import annotations

import json
import re
import uuid

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

RECORD_STATES = """() => {
  window.__notReloaded = true;
  window.__states = {};
  const body = document.querySelector('#jobs tbody');
  const record = () => body.querySelectorAll('tr').forEach((row) => {
    const id = row.querySelector('[data-col="job_id"]').textContent;
    const seen = (window.__states[id] = window.__states[id] || []);
    if (seen[seen.length - 1] !== row.dataset.state) seen.push(row.dataset.state);
  });
  new MutationObserver(record).observe(body, {subtree: true, childList: true, attributes: true, characterData: true});
}"""


def launch(page, job_id: str, *, set_options: str, study: str = "") -> None:
    page.goto("/sites/site-a/launch/")
    page.get_by_label("NVFlare job id").fill(job_id)
    if study:
        page.get_by_label("Study").select_option(study)
    page.locator("summary", has_text="Advanced").click()
    page.get_by_label("Job module (exe_module)").fill("fake_nvflare_job")
    page.get_by_label("--set options").fill(set_options)
    page.get_by_role("button", name="Launch").click()
    page.wait_for_url(re.compile(r"/jobs/\d+/$"))


def test_login_shows_who_and_which_site_and_works_on_a_phone(new_page):
    page = new_page(user="alice")
    expect(page).to_have_url(re.compile(r"/$"))  # the all-sites home page: her sites and their health
    home = page.locator("main").inner_text()
    assert all(name in home for name in ("site-a", "site-c", "site-d")) and "site-b" not in home
    page.goto("/sites/site-a/")
    expect(page.locator(".who")).to_contain_text("Signed in as alice")
    expect(page.locator(".who")).to_contain_text("admin of site-a")
    switcher = page.get_by_label("Site", exact=True)
    assert switcher.locator("option").all_inner_texts() == ["site-a", "site-c", "site-d"]  # never site-b
    expect(page.locator("#live")).to_have_text("live")
    for path in ("launch/", "history/", "studies/", "settings/", "tokens/"):
        page.goto(f"/sites/site-a/{path}")
        expect(page.locator("h1")).to_be_visible()
    page.goto("/tokens/")
    switcher = page.get_by_label("Site", exact=True)
    switcher.select_option("site-c")  # the switcher submits itself
    expect(page).to_have_url(re.compile(r"/sites/site-c/$"))
    expect(page.locator(".who")).to_contain_text("viewer of site-c")
    shot(page, "overview-desktop")
    phone = new_page(user="alice", viewport=(390, 844))
    phone.goto("/sites/site-a/")
    expect(phone.locator("#live")).to_have_text("live")
    assert phone.evaluate("document.documentElement.scrollWidth") <= 390 + 1  # nothing forces sideways scrolling
    shot(phone, "overview-phone")


def test_anonymous_users_are_redirected_to_login_on_every_page(new_page, server):
    page = new_page()
    paths = ["/", "/sites/site-a/", "/sites/site-a/launch/", "/sites/site-a/settings/", "/sites/site-a/studies/",
             "/sites/site-a/history/", "/sites/site-a/tokens/", "/sites/site-a/study-data/import/", "/tokens/",
             f"/jobs/{server['b_job']}/", f"/jobs/{server['b_job']}/logs.txt", "/sites/new/"]
    for path in paths:
        page.goto(path)
        assert "/accounts/login/?next=" in page.url, path
    expect(page.get_by_label("Username")).to_be_visible()
    shot(page, "login")


def test_a_member_of_site_a_sees_nothing_of_site_b(new_page, server):
    page = new_page(user="alice")
    for path in ("/sites/site-b/", f"/jobs/{server['b_job']}/", f"/jobs/{server['b_job']}/logs.txt",
                 "/sites/site-b/settings/", "/sites/site-b/studies/", "/sites/site-b/history/"):
        assert page.goto(path).status == 404, path
    page.goto("/sites/site-a/?q=b-secret")
    expect(page.locator("#no-jobs")).to_be_visible()
    assert "site-b" not in page.content() and "b-secret" not in page.locator("#jobs").inner_text()
    shot(page, "site-b-not-found")


def test_site_settings_studies_and_datasets_with_inline_validation(new_page, server):
    admin = new_page(user="alice")  # a site admin: the backend and host paths are staff's, shown read-only
    admin.goto("/sites/site-a/settings/")
    expect(admin.get_by_label("Backend")).to_be_disabled()
    expect(admin.locator("#staff-note")).to_be_visible()
    page = new_page(user="sam")  # platform staff
    page.goto("/sites/site-a/settings/")
    expect(page.locator('fieldset[data-backend="docker"]')).to_be_hidden()  # only the chosen backend's fields
    page.get_by_label("Backend").select_option("docker")
    expect(page.locator('fieldset[data-backend="docker"]')).to_be_visible()
    expect(page.locator('fieldset[data-backend="process"]')).to_be_hidden()
    page.get_by_label("Network", exact=True).fill("not a network!")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#id_docker__network_error")).to_have_text("must be a Docker network name")
    page.get_by_label("Backend").select_option("process")
    page.get_by_role("button", name="Save settings").click()
    expect(page.get_by_role("status").filter(has_text="Site settings saved.")).to_be_visible()
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#checks")).to_contain_text("✓ workspace")

    page.goto("/sites/site-a/studies/")
    page.get_by_label("Study name").fill("cohort")
    page.get_by_label("Description").fill("<b>not bold</b>")
    page.get_by_role("button", name="Add study").click()
    expect(page).to_have_url(re.compile(r"/studies/cohort/$"))
    page.get_by_label("Dataset name").fill("Bad Name")
    page.get_by_label("Source").fill(str(server["data"] / "cohort-a"))
    page.get_by_role("button", name="Add dataset").click()
    expect(page.locator("#dataset-name_error")).to_contain_text("Invalid name")  # the dataset form's own ids
    shot(page, "dataset-validation-error")
    page.get_by_label("Dataset name").fill("train")
    page.get_by_label("Mode").select_option("rw")
    page.get_by_role("button", name="Add dataset").click()
    expect(page.locator("#datasets")).to_contain_text("/data/cohort/train")
    expect(page.locator("#datasets")).to_contain_text("read-write")
    page.goto("/sites/site-a/studies/")
    expect(page.locator("#studies")).to_contain_text("<b>not bold</b>")  # shown as text
    shot(page, "studies")


def test_test_launch_lists_the_dataset_the_probe_saw(new_page, server):
    page = new_page(user="alice")
    page.goto("/sites/site-a/settings/")
    page.get_by_label("Study whose datasets to check").select_option("preset")
    page.get_by_role("button", name="Run test launch").click()
    result = page.locator("#probe-result")
    expect(result).to_contain_text("succeeded", timeout=30000)
    expect(page.locator("#probe-mounts")).to_contain_text(str(server["data"] / "cohort-a"))
    expect(page.locator("#probe-mounts")).to_contain_text("train")
    shot(page, "test-launch")
    page.goto("/sites/site-a/?q=probe-")
    expect(page.locator("#jobs tbody tr").first).to_contain_text("probe-")  # it is in the history


def test_a_launched_job_moves_through_its_states_live_on_the_overview(new_page):
    overview = new_page(user="alice")
    overview.goto("/sites/site-a/")
    expect(overview.locator("#live")).to_have_text("live")
    overview.evaluate(RECORD_STATES)
    before = int(overview.locator('[data-count="succeeded"]').inner_text())
    job_id = f"live-{uuid.uuid4().hex[:8]}"
    launcher = overview.context.new_page()
    launch(launcher, job_id, set_options="sleep=1.5", study="preset")
    row = overview.locator("#jobs tbody tr", has_text=job_id)
    expect(row).to_have_attribute("data-state", "running", timeout=20000)
    expect(row.locator('[data-col="duration"]')).to_have_text(re.compile(r"^\d+s$"))
    expect(row).to_have_attribute("data-state", "succeeded", timeout=20000)
    expect(row.locator('[data-col="return_code"]')).to_have_text("0")
    expect(overview.locator('[data-count="succeeded"]')).to_have_text(str(before + 1))
    states = overview.evaluate("(id) => window.__states[id]", job_id)
    assert overview.evaluate("window.__notReloaded") is True
    assert [s for s in states if s in ("starting", "running", "succeeded")] == ["starting", "running", "succeeded"], states
    shot(overview, "overview-live")


def test_a_reconnecting_overview_gets_the_change_whose_push_it_never_received(new_page):
    """Web, worker and watcher push on their own, so a page can get a change with a higher seq
    while one with a lower seq is lost (its publisher died). Here a proxy in the browser drops
    every frame about one job, then cuts the socket right after a later job's first change: the
    page must resume with what it holds per job, not just the highest seq it saw, and the server
    must send the lost job's state."""
    lost_id, later_id = f"lost-{uuid.uuid4().hex[:8]}", f"later-{uuid.uuid4().hex[:8]}"
    dropped_seqs, resumes, cut = [], [], []

    def frames_without_lost(text: str) -> str | None:
        message = json.loads(text)
        updates = message["updates"] if message.get("type") == "job.updates" else [message]
        kept = []
        for update in updates:
            if update.get("type") == "job.update" and update["job"]["job_id"] == lost_id:
                if update.get("seq") is not None:  # not a resource-use sample (no event, no seq)
                    dropped_seqs.append(update["seq"])
            else:
                kept.append(update)
        if not kept:
            return None
        return json.dumps(kept[0] if len(kept) == 1 else {"type": "job.updates", "updates": kept})

    def proxy(route):
        server = route.connect_to_server()

        def from_page(text):
            if json.loads(text).get("type") == "resume":
                resumes.append(json.loads(text))
            server.send(text)

        def from_server(text):
            if cut:  # the reconnected socket gets everything
                route.send(text)
                return
            forward = frames_without_lost(text)
            if forward is not None:
                route.send(forward)
            if later_id in text:  # the later job's first change is through: cut the socket
                cut.append(True)
                route.close()
                server.close()

        route.on_message(from_page)
        server.on_message(from_server)

    overview = new_page(user="alice")
    overview.route_web_socket(re.compile(r"/ws/sites/site-a/jobs/$"), proxy)
    overview.goto("/sites/site-a/")
    expect(overview.locator("#live")).to_have_text("live")
    launcher = overview.context.new_page()
    launch(launcher, lost_id, set_options="sleep=25", study="preset")
    expect(launcher.locator("#job-state")).to_have_text("running", timeout=20000)
    assert overview.locator("#jobs tbody tr", has_text=lost_id).count() == 0  # its pushes were dropped
    launch(launcher, later_id, set_options="sleep=0.5", study="preset")

    # The lost job's next change is 25 s away: "running" can only come from the resume answer.
    expect(overview.locator("#jobs tbody tr", has_text=lost_id)).to_have_attribute("data-state", "running",
                                                                                  timeout=10000)
    assert cut and len(resumes) == 2, resumes
    assert dropped_seqs and resumes[1]["seq"] < min(dropped_seqs), (resumes, dropped_seqs)
    assert all(seq > resumes[1]["seq"] for seq in resumes[1]["jobs"].values())
    expect(overview.locator("#jobs tbody tr", has_text=later_id)).to_have_attribute("data-state", "succeeded",
                                                                                   timeout=20000)


def test_job_page_shows_log_lines_as_they_arrive_escaped(new_page):
    page = new_page(user="alice")
    launch(page, f"logs-{uuid.uuid4().hex[:8]}", set_options="sleep=1")
    logs = page.locator("#logs")
    expect(logs).to_contain_text("fake job done", timeout=20000)
    expect(logs).to_contain_text("<b>html in a log line</b>")  # a container's HTML is text
    assert logs.locator("b").count() == 0
    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.locator("#rc-text")).to_have_text("success")
    expect(page.locator("#timeline")).to_contain_text("succeeded")
    with page.expect_download() as download:
        page.get_by_role("link", name="Download saved tail").click()
    assert "fake job done" in open(download.value.path()).read()
    shot(page, "job-finished")


def test_terminate_a_running_job_after_confirming(new_page):
    page = new_page(user="alice")
    launch(page, f"term-{uuid.uuid4().hex[:8]}", set_options="sleep=60")
    expect(page.locator("#job-state")).to_have_text("running", timeout=20000)
    page.get_by_role("link", name="Terminate…").click()
    dialog = page.get_by_role("dialog")
    expect(dialog).to_be_visible()
    shot(page, "terminate-dialog")
    dialog.get_by_role("button", name="Terminate").click()
    expect(page.locator("#job-state")).to_have_text("aborted", timeout=20000)
    expect(page.locator("#rc")).to_have_text("9")
    expect(page.locator("#rc-text")).to_contain_text("aborted")
    expect(page.locator("#timeline")).to_contain_text("termination requested by alice")
    expect(page.get_by_role("link", name="Terminate…")).to_have_count(0)
    shot(page, "job-terminated")


def test_import_study_data_after_its_preview(new_page, server):
    page = new_page(user="alice")
    page.goto("/sites/site-a/study-data/import/")
    text = (f"preset:\n  train:\n    source: {server['data'] / 'cohort-a'}\n    mode: rw\n"
            f"imported:\n  images:\n    source: {server['data'] / 'imported'}\n    mode: ro\n")
    page.get_by_label("study_data.yaml").fill(text)
    page.get_by_role("button", name="Preview").click()
    table = page.locator("#preview-table")
    expect(table.locator("tr.change-added")).to_contain_text("imported/images")
    expect(table.locator("tr.change-changed")).to_contain_text("preset/train")
    shot(page, "import-preview")
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    export = f"{server['url']}/sites/site-a/study_data.yaml"
    assert "images:" not in requests.get(export, cookies=cookies, timeout=5).text  # nothing changed yet
    page.get_by_role("button", name="Apply these changes").click()
    expect(page).to_have_url(re.compile(r"/sites/site-a/studies/$"))
    expect(page.locator("#studies")).to_contain_text("imported")
    exported = requests.get(export, cookies=cookies, timeout=5).text
    assert "images:" in exported and "mode: rw" in exported


@pytest.mark.docker
def test_docker_test_launch_shows_each_mount_and_its_mode(new_page, docker_available):
    page = new_page(user="alice")
    page.goto("/sites/site-d/settings/")
    page.get_by_role("button", name="Test connection").click()
    expect(page.locator("#checks")).to_be_visible()
    page.get_by_label("Study whose datasets to check").select_option("imaging")
    page.get_by_role("button", name="Run test launch").click()
    expect(page.locator("#probe-result")).to_contain_text("succeeded", timeout=60000)
    rows = page.locator("#probe-mounts tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.filter(has_text="/data/imaging/scans")).to_contain_text("ro")
    expect(rows.filter(has_text="/data/imaging/out")).to_contain_text("rw")
    expect(page.locator("#probe-result")).to_contain_text("all datasets as configured")
    shot(page, "docker-test-launch")
