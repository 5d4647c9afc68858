"""Forms, confirmations and error pages in headless Chromium (issue #17, items 5, 6 and 7), against
the shared dashboard server (tests/browser/conftest.py). Screenshots at 1440x900 and 390x844 go to
$LAUNCHER_TEST_OUTPUT/browser/forms-*.png.

Everything here happens on a site this module creates itself, so the other browser tests' sites
stay as they are."""

from __future__ import annotations

import pytest
from playwright.sync_api import expect

from tests.browser.conftest import shot

pytestmark = pytest.mark.browser

WIDTHS = {"desktop": (1440, 900), "phone": (390, 844)}


@pytest.mark.parametrize("width", WIDTHS)
def test_a_new_site_with_many_problems_gets_them_all_in_one_submit(new_page, width):
    page = new_page(user="sam", viewport=WIDTHS[width])  # platform staff
    page.goto("/sites/new/")
    page.get_by_label("Site name").fill("Bad Name!")
    page.get_by_label("Allowed data roots").fill("relative/root\n/")
    page.get_by_label("Backend").select_option("docker")
    page.get_by_label("Network", exact=True).fill("not a network!")
    page.locator("#id_docker__timeout").fill("999")  # each backend has a Timeout
    page.get_by_role("button", name="Create site").click()
    summary = page.locator("#sitesettings-errors")
    expect(summary).to_be_visible()
    expect(summary).to_have_attribute("role", "alert")
    expect(summary.get_by_role("heading")).to_have_text("5 problems to fix")
    # In the order of the fields, each a link to its field.
    links = summary.get_by_role("link")
    expect(links).to_have_count(5)
    hrefs = [links.nth(i).get_attribute("href") for i in range(5)]
    assert hrefs == ["#id_name", "#id_allowed_data_roots", "#id_allowed_data_roots", "#id_docker__network",
                     "#id_docker__timeout"]
    expect(summary).to_be_focused()  # the summary takes the focus, so a screen reader starts there
    network = page.get_by_label("Network", exact=True)
    expect(network).to_have_attribute("aria-invalid", "true")
    expect(page.locator("#id_docker__network_error")).to_have_text("must be a Docker network name")
    assert "id_docker__network_error" in network.get_attribute("aria-describedby")
    shot(page, f"forms-site-errors-{width}")


def test_confirmations_for_rename_token_revoke_and_delete(new_page):
    page = new_page(user="sam", viewport=WIDTHS["desktop"])
    page.goto("/sites/new/")
    page.get_by_label("Site name").fill("site-forms")
    page.get_by_label("Backend").select_option("process")
    # The tests run as root, so the default workspace is root's: jobs may run as root only when staff say so.
    page.locator("#id_process__allow_root").check()
    page.get_by_role("button", name="Create site").click()
    expect(page).to_have_url("/sites/site-forms/settings/")

    # Rename: a step that says what breaks, then saved.
    page.get_by_label("Site name").fill("site-forms-2")
    page.get_by_role("button", name="Save settings").click()
    expect(page.locator("#consequences")).to_contain_text("breaks its FL client")
    shot(page, "forms-confirm-rename-desktop")
    page.get_by_role("button", name="Save settings").click()
    expect(page).to_have_url("/sites/site-forms-2/settings/")
    expect(page.get_by_label("Site name")).to_have_value("site-forms-2")

    # Token revoke: nothing happens until confirmed; Cancel goes back.
    page.goto("/sites/site-forms-2/tokens/")
    page.get_by_label("Token name").fill("fl-server")
    page.get_by_role("button", name="Create token").click()
    page.get_by_role("link", name="Revoke token").click()
    expect(page.locator("#consequences")).to_contain_text("FL server of site site-forms-2")
    page.set_viewport_size({"width": 390, "height": 844})
    shot(page, "forms-confirm-revoke-phone")
    page.get_by_role("link", name="Cancel").click()
    expect(page.locator("#tokens")).not_to_contain_text("revoked")
    page.get_by_role("link", name="Revoke token").click()
    page.get_by_role("button", name="Revoke token").click()
    expect(page.locator("#tokens")).to_contain_text("revoked")

    # Delete the site.
    page.set_viewport_size({"width": 1440, "height": 900})
    page.goto("/sites/site-forms-2/settings/")
    page.get_by_role("link", name="Delete site…").click()
    expect(page.locator("#consequences")).to_contain_text("Site site-forms-2 has 0 job(s)")
    page.get_by_role("button", name="Delete site").click()
    expect(page.get_by_role("status").filter(has_text="Site site-forms-2 deleted.")).to_be_visible()
    assert page.goto("/sites/site-forms-2/").status == 404


@pytest.mark.parametrize("width", WIDTHS)
def test_error_pages_are_styled_with_a_way_back(new_page, width):
    page = new_page(user="alice", viewport=WIDTHS[width])
    assert page.goto("/sites/no-such-site/").status == 404
    expect(page.get_by_role("heading", name="Page not found (404)")).to_be_visible()
    nav = page.get_by_role("navigation", name="Where to go from here")
    expect(nav.get_by_role("link", name="Site site-a")).to_be_visible()
    shot(page, f"forms-404-{width}")
    assert page.goto("/sites/site-c/settings/").status == 403  # alice is a viewer there
    expect(page.locator("#error-page")).to_contain_text("You need the admin role on site-c")
    nav.get_by_role("link", name="Back to the dashboard").click()
    expect(page.locator("#error-page")).to_have_count(0)  # the dashboard (it opens the last site)
    shot(page, f"forms-403-after-back-{width}")
