"""Sign-in throttling on the dashboard login and the Django admin login: failures are counted per
username and per address; past the limit the page says so, answers 429 and refuses even the right
password until the window ends."""

from __future__ import annotations

import pytest
from django.core.cache import cache
from django.test import Client

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]

DASHBOARD, ADMIN = "/accounts/login/", "/admin/login/"
LOCKED = "Too many failed sign-in attempts; try again in 5 minutes."


@pytest.fixture(autouse=True)
def clean_counts(settings):
    settings.LAUNCHER_LOGIN_FAILURE_LIMIT = 3
    cache.clear()
    yield
    cache.clear()


def sign_in(url: str, username: str, password: str, address: str = "10.1.1.1"):
    client = Client(REMOTE_ADDR=address)
    response = client.post(url, {"username": username, "password": password})
    return response, client


def signed_in(client) -> bool:
    return "_auth_user_id" in client.session


@pytest.mark.parametrize("url, user, password", [(DASHBOARD, "viewer", "pw-viewer-123"),
                                                  (ADMIN, "staff", "pw-staff-123")])
def test_the_right_password_is_refused_during_a_lockout_with_the_reason_inline(users, url, user, password):
    for _ in range(3):
        response, _ = sign_in(url, user, "wrong")
        assert response.status_code == 200 and LOCKED not in response.content.decode()
    response, client = sign_in(url, user, password)
    assert response.status_code == 429 and not signed_in(client)
    assert 240 < int(response["Retry-After"]) <= 300
    page = response.content.decode()
    assert LOCKED in page and 'name="password"' in page  # on the form itself, which is shown again
    # From another address too: the username is locked, wherever the guesses come from.
    response, client = sign_in(url, user, password, address="10.9.9.9")
    assert response.status_code == 429 and not signed_in(client)


def test_before_the_limit_the_right_password_signs_in_and_clears_the_username_count(users):
    for _ in range(2):
        sign_in(DASHBOARD, "viewer", "wrong")
    response, client = sign_in(DASHBOARD, "viewer", "pw-viewer-123")
    assert response.status_code == 302 and signed_in(client)
    for _ in range(2):  # the count started again (2 + 2 < 3 + 1 would otherwise lock)
        sign_in(DASHBOARD, "viewer", "wrong", address="10.2.2.2")
    response, client = sign_in(DASHBOARD, "viewer", "pw-viewer-123", address="10.3.3.3")
    assert response.status_code == 302 and signed_in(client)


def test_one_address_trying_many_usernames_is_locked_out_others_are_not(users):
    for name in ("nobody-1", "nobody-2", "Viewer"):
        sign_in(DASHBOARD, name, "wrong", address="10.4.4.4")
    response, client = sign_in(DASHBOARD, "operator", "pw-operator-123", address="10.4.4.4")
    assert response.status_code == 429 and LOCKED in response.content.decode() and not signed_in(client)
    # Neither the operator from elsewhere nor the viewer (one failure, as "Viewer") is locked.
    response, client = sign_in(DASHBOARD, "operator", "pw-operator-123", address="10.5.5.5")
    assert response.status_code == 302 and signed_in(client)
    response, client = sign_in(ADMIN, "staff", "pw-staff-123", address="10.5.5.5")
    assert response.status_code == 302 and signed_in(client)


def test_failures_on_either_page_count_for_both(users):
    sign_in(ADMIN, "staff", "wrong")
    sign_in(DASHBOARD, "staff", "wrong", address="10.6.6.6")
    sign_in(ADMIN, "STAFF", "wrong", address="10.7.7.7")
    response, client = sign_in(DASHBOARD, "staff", "pw-staff-123", address="10.8.8.8")
    assert response.status_code == 429 and not signed_in(client)


def test_an_ordinary_failure_keeps_the_usual_message(users):
    response, _ = sign_in(DASHBOARD, "viewer", "wrong")
    page = response.content.decode()
    assert response.status_code == 200 and "didn't match" in page and "Too many" not in page
