"""A site in trouble tells its admin why, in headless Chromium (issue #17, items 1, 2 and 7), against
the shared dashboard server (tests/browser/conftest.py). Screenshots at 1440x900 and 390x844 go to
$LAUNCHER_TEST_OUTPUT/browser/trouble-*.png.

- item 1: a Docker site whose daemon address is a loopback port nobody listens on; a job submitted
  to it by its FL server (a site token) says on its page, live, why it waits (attempt n of N, the
  address, the next try), the site's pages carry the trouble banner and the home page lists it;
- item 2: settings naming a Docker network that does not exist and a root-owned workspace without
  allow_root: one submit names both problems, nothing is saved; Test connection says the same;
- item 7: the Members page (staff add, change, remove after a confirmation; a site admin reads it)
  and the styled 403/404 pages.

Every site and membership here is this module's own, so the other browser tests' fixtures stay as
they are."""

from __future__ import annotations

import os
import re
import socket
import uuid

import pytest
import requests
from playwright.sync_api import expect

from tests.browser.conftest import shot
from tests.util import docker_client_or_skip, wait_until

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": (1440, 900), "phone": (390, 844)}
IMAGE = "launcher-test/fake-python:1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _workspace(server, name: str, owner: int) -> str:
    ws = server["workspaces"] / name
    for sub in ("startup", "local"):
        (ws / sub).mkdir(parents=True, exist_ok=True)
    for path in (ws, ws / "startup", ws / "local"):
        os.chown(path, owner, owner)
    return str(ws)


def _create_docker_site(page, name: str, *, workspace: str, docker_host: str = "", network: str = "",
                        user: str = "") -> None:
    page.goto("/sites/new/")
    page.get_by_label("Site name").fill(name)
    page.get_by_label("Backend").select_option("docker")
    page.locator("#id_docker__workspace").fill(workspace)
    if docker_host:
        page.locator("#id_docker__docker_host").fill(docker_host)
    if network:
        page.locator("#id_docker__network").fill(network)
    if user:
        page.locator("#id_docker__user").fill(user)
    page.get_by_role("button", name="Create site").click()


def _site_token(page, site: str) -> str:
    page.goto(f"/sites/{site}/tokens/")
    page.get_by_label("Token name").fill("fl-server")
    page.get_by_role("button", name="Create token").click()
    return page.locator("#secret-value").input_value()


def _job_body(site: str, job_id: str) -> dict:
    args = {"exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
            "workspace": ["-m", "/var/tmp/nvflare/workspace"], "job_id": ["-n", job_id], "client_name": ["-c", site],
            "parent_url": ["-p", "tcp://localhost:8004"], "parent_conn_sec": ["--parent_conn_sec", "clear"],
            "auth_token": ["-t", "tok-SECRET"]}
    return {"site": site, "job_id": job_id, "job_args": args,
            "job_meta": {"job_id": job_id, "launcher_spec": {"default": {"docker": {"image": IMAGE}}}}}


@pytest.mark.parametrize("width", WIDTHS)
def test_a_job_on_an_unreachable_engine_says_why_live_and_the_site_shows_its_trouble(new_page, server, width):
    site = f"trouble-{width}"
    address = f"tcp://127.0.0.1:{_free_port()}"  # loopback, nobody listens: connection refused at once
    page = new_page(user="sam", viewport=WIDTHS[width])  # platform staff: docker_host is a staff setting
    _create_docker_site(page, site, workspace=_workspace(server, site, 1000), docker_host=address, user="1000:1000")
    expect(page).to_have_url(f"/sites/{site}/settings/")  # saved: an engine that does not answer is a warning
    token = _site_token(page, site)

    api = requests.Session()
    api.headers["Authorization"] = f"Token {token}"
    created = api.post(f"{server['url']}/api/v1/jobs/", json=_job_body(site, f"dead-{uuid.uuid4().hex[:8]}"), timeout=10)
    assert created.status_code == 201, created.text
    pk = created.json()["id"]
    try:
        # The first failed attempt is the job's detail right away, not after the retries.
        first = wait_until(lambda: api.get(f"{server['url']}/api/v1/jobs/{pk}/", timeout=5).json()["detail"],
                           timeout=15, message="the first failed attempt's detail")
        assert re.match(r"launch attempt 1 of \d+ failed: .*unreachable.*; next try in \d+ s$", first), first

        page.goto(f"/jobs/{pk}/")
        page.evaluate("window.__notReloaded = true")  # a reload would drop it
        expect(page.locator("#job-state")).to_have_text("queued")
        timeline = page.locator("#timeline")
        expect(timeline).to_contain_text(re.compile(r"launch attempt 1 of \d+ failed: "))
        # The next attempt's note and the new detail arrive live.
        expect(timeline).to_contain_text(re.compile(r"launch attempt 2 of \d+ failed: .*next try in \d+ s"),
                                         timeout=20000)
        detail = page.locator("dd[data-field=detail]")
        expect(detail).to_contain_text(re.compile(r"launch attempt [2-9] of \d+ failed: "))
        expect(detail).to_contain_text(f"Docker daemon at {address} is unreachable")
        expect(page.locator("dd[data-field=reason]")).to_have_text("EngineUnreachable")
        assert page.evaluate("window.__notReloaded") is True
        shot(page, f"trouble-job-unreachable-{width}")

        # The site's pages carry the banner once the watcher has tried the engine.
        def banner_says_unreachable():
            page.goto(f"/sites/{site}/")
            banner = page.locator("#site-health-banner")
            return banner.count() == 1 and "Engine unreachable" in banner.inner_text()

        wait_until(banner_says_unreachable, timeout=45, interval=1, message="the site's trouble banner")
        expect(page.locator("#site-health-banner")).to_contain_text(f"Site {site} needs attention")
        expect(page.locator("#site-health-banner")).to_have_attribute("role", "alert")
        shot(page, f"trouble-site-banner-{width}")
        page.goto(f"/sites/{site}/settings/")
        expect(page.locator("#site-health-banner")).to_contain_text("Engine unreachable")

        # The home page lists it as in trouble, next to sites that are fine.
        page.goto("/")
        row = page.locator(f"#sites tr[data-site='{site}']")
        expect(row.locator("ul.problems")).to_contain_text("Engine unreachable")
        expect(row).to_contain_text("unreachable")
        shot(page, f"trouble-home-{width}")
    finally:  # stop the retry chain on the shared server
        api.post(f"{server['url']}/api/v1/jobs/{pk}/terminate/", timeout=10)


@pytest.fixture
def docker_network():
    """A real Docker network this test may remove (made on the local daemon; no pull)."""
    client = docker_client_or_skip(timeout=10, images=False)
    network = client.networks.create(f"trouble-net-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        yield network
    finally:
        try:
            network.remove()
        except Exception:  # already removed by the test
            pass
        client.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_bad_network_and_root_workspace_are_named_at_once_on_save_and_by_test_connection(
        new_page, server, width, docker_network):
    site = f"settings-{width}"
    page = new_page(user="sam", viewport=WIDTHS[width])
    root_ws = _workspace(server, f"{site}-root", 0)

    # A new site: both problems in one submit, inline and in the summary, and no site saved.
    _create_docker_site(page, site, workspace=root_ws, network="no-such-network-xyz")
    summary = page.locator("#sitesettings-errors")
    expect(summary).to_be_visible()
    expect(summary.get_by_role("heading")).to_have_text("2 problems to fix")
    links = summary.get_by_role("link")  # each names its field and links to it
    expect(links).to_have_count(2)
    assert [links.nth(i).get_attribute("href") for i in range(2)] == ["#id_docker__network", "#id_docker__user"]
    expect(links.nth(0)).to_contain_text("Docker network 'no-such-network-xyz' does not exist")
    expect(links.nth(1)).to_contain_text("docker.user: uid 0 (root) is refused unless the site sets allow_root")
    expect(links.nth(1)).to_contain_text(root_ws)
    expect(page.locator("#id_docker__network_error")).to_contain_text("no-such-network-xyz")
    expect(page.locator("#id_docker__user_error")).to_contain_text("uid 0 (root)")
    expect(page.locator("#id_docker__network")).to_have_attribute("aria-invalid", "true")
    shot(page, f"trouble-settings-errors-{width}")
    assert page.goto(f"/sites/{site}/").status == 404  # nothing saved

    # A site saved while all was well, then the network goes and the workspace becomes root's.
    good_ws = _workspace(server, site, 1000)
    _create_docker_site(page, site, workspace=good_ws, network=docker_network.name)
    expect(page).to_have_url(f"/sites/{site}/settings/")
    docker_network.remove()
    os.chown(good_ws, 0, 0)

    page.get_by_role("button", name="Test connection").click()
    checks = page.locator("#checks")
    expect(checks.locator("li.bad").filter(has_text=docker_network.name)).to_have_count(1)
    expect(checks.locator("li.bad").filter(has_text=re.compile("root"))).to_have_count(1)
    shot(page, f"trouble-test-connection-{width}")

    # An unchanged save is not refused for what it did not cause, but it says the same two problems.
    page.get_by_role("button", name="Save settings").click()
    statuses = page.get_by_role("status")
    expect(statuses.filter(has_text=f"Docker network '{docker_network.name}' does not exist")).to_have_count(1)
    expect(statuses.filter(has_text="uid 0 (root) is refused unless the site sets allow_root")).to_have_count(1)


@pytest.mark.parametrize("width", WIDTHS)
def test_members_page_for_staff_and_read_only_for_a_site_admin(new_page, server, width):
    site = f"members-{width}"
    page = new_page(user="sam", viewport=WIDTHS[width])
    page.goto("/sites/new/")
    page.get_by_label("Site name").fill(site)
    page.get_by_label("Backend").select_option("process")
    page.locator("#id_process__allow_root").check()  # the tests run as root
    page.get_by_role("button", name="Create site").click()
    expect(page).to_have_url(f"/sites/{site}/settings/")

    page.goto(f"/sites/{site}/members/")
    members = page.locator("#members")
    for user, role in (("alice", "admin"), ("bob", "viewer")):
        page.get_by_label("Username").fill(user)
        page.locator("#id_role").select_option(role)
        page.get_by_role("button", name="Add member").click()
        expect(members.locator("tr", has_text=user).locator(".role")).to_have_text(role)
    # An unknown user: refused, naming the field, nothing added.
    page.get_by_label("Username").fill("nobody-here")
    page.get_by_role("button", name="Add member").click()
    expect(page.locator("#members-errors")).to_contain_text("username")
    expect(members.locator("tbody tr")).to_have_count(2)

    page.get_by_label("Role of bob").select_option("operator")
    members.locator("tr", has_text="bob").get_by_role("button", name="Change role").click()
    expect(members.locator("tr", has_text="bob").locator(".role")).to_have_text("operator")
    shot(page, f"trouble-members-staff-{width}")

    # Removal asks first; Cancel keeps the member.
    page.get_by_role("link", name="Remove bob").click()
    expect(page.locator("#consequences")).to_be_visible()
    shot(page, f"trouble-members-confirm-remove-{width}")
    page.get_by_role("link", name="Cancel").click()
    expect(members.locator("tr", has_text="bob")).to_have_count(1)
    page.get_by_role("link", name="Remove bob").click()
    page.get_by_role("button", name="Remove member").click()
    expect(page.get_by_role("status").filter(has_text=f"bob removed from {site}.")).to_be_visible()
    expect(page.locator("#members tr", has_text="bob")).to_have_count(0)

    # The site admin reads the page but has no controls; bob (no longer a member) gets the styled 404.
    admin = new_page(user="alice", viewport=WIDTHS[width])
    admin.goto(f"/sites/{site}/members/")
    expect(admin.locator("#members tr", has_text="alice").locator(".role")).to_have_text("admin")
    expect(admin.get_by_text("Read-only: only platform staff")).to_be_visible()
    expect(admin.locator("#member-add")).to_have_count(0)
    expect(admin.get_by_role("button", name="Change role")).to_have_count(0)
    expect(admin.locator("#members tbody tr")).to_have_count(1)
    shot(admin, f"trouble-members-read-only-{width}")

    outsider = new_page(user="bob", viewport=WIDTHS[width])
    assert outsider.goto(f"/sites/{site}/members/").status == 404
    expect(outsider.get_by_role("heading", name="Page not found (404)")).to_be_visible()
    expect(outsider.get_by_role("navigation", name="Where to go from here")).to_be_visible()
    shot(outsider, f"trouble-404-{width}")
    # alice is admin of this site but not staff: the staff-only new-site page is a styled 403.
    assert admin.goto("/sites/new/").status == 403
    expect(admin.locator("#error-page")).to_be_visible()
    expect(admin.get_by_role("navigation", name="Where to go from here")).to_be_visible()
    shot(admin, f"trouble-403-{width}")
