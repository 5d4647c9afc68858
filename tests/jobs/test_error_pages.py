"""Styled 403/404/500 pages in the dashboard's layout, with a way back (issue #17, item 7). DEBUG is
off in tests, so these are the pages people see. The 500 page needs neither the database nor a
signed-in user: it is what shows when those are the problem."""

from __future__ import annotations

import pytest
from django.test import Client, RequestFactory
from django.urls import include, path, reverse
from django.views.defaults import server_error

pytestmark = [pytest.mark.embedded]


def boom(request):
    raise RuntimeError("a bug")


urlpatterns = [path("boom/", boom), path("", include("launcher_site.urls"))]


@pytest.mark.django_db
def test_404_is_styled_and_links_back_to_the_dashboard_and_the_users_sites(client, users, process_site):
    client.force_login(users["owner"])
    response = client.get("/sites/no-such-site/")
    assert response.status_code == 404
    body = response.content.decode()
    assert 'class="topbar"' in body and 'id="error-page"' in body and "Page not found" in body
    assert 'href="/"' in body and f'href="{reverse("site-overview", args=["site-1"])}"' in body
    assert "/sites/no-such-site/" in body


@pytest.mark.django_db
def test_403_says_which_role_is_missing_and_links_back(client, users, process_site):
    client.force_login(users["viewer"])
    response = client.get(reverse("site-settings", args=["site-1"]))
    assert response.status_code == 403
    body = response.content.decode()
    assert "You need the admin role on site-1" in body and 'id="error-nav"' in body and 'class="topbar"' in body


@pytest.mark.django_db
def test_api_errors_stay_json(client, users):
    client.force_login(users["owner"])
    response = client.get("/api/v1/no-such-thing/")
    assert response.status_code == 404 and response.json() == {"detail": "Not found."}


@pytest.mark.django_db
@pytest.mark.urls(__name__)
def test_an_unexpected_error_shows_the_styled_500_page(users):
    client = Client(raise_request_exception=False)
    client.force_login(users["owner"])
    response = client.get("/boom/")
    assert response.status_code == 500
    body = response.content.decode()
    assert 'id="error-page"' in body and 'href="/"' in body and "(500)" in body
    assert "Signed in as" not in body  # rendered without the request: no user, no session


def test_the_500_page_renders_without_the_database():
    # No django_db mark: any query here fails the test.
    response = server_error(RequestFactory().get("/anything/"))
    assert response.status_code == 500
    body = response.content.decode()
    assert "Something went wrong on our side" in body and 'href="/"' in body and 'class="topbar"' in body
