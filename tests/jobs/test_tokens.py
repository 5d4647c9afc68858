"""API tokens: the secret is shown once, stored only hashed, and scoped to a site or a user."""

import io

import pytest
from django.core.management import call_command

from django.utils import timezone

from jobs.models import ApiToken, Site
from jobs.services import tokens
from jobs.services.tokens import token_authenticate, token_create, token_hash, token_revoke
from tests.util import wait_until

pytestmark = [pytest.mark.django_db, pytest.mark.embedded]


def test_secret_is_not_stored_only_its_hash(users):
    token, secret = token_create(user=users["owner"])
    stored = ApiToken.objects.get(pk=token.pk)
    assert secret not in (stored.key_hash, stored.prefix, stored.name)
    assert stored.key_hash == token_hash(secret)
    assert secret.startswith(stored.prefix)


def test_token_authenticates_its_owner_and_records_use(users):
    site = Site.objects.create(name="site-1")
    token, secret = token_create(site=site)
    found = token_authenticate(secret)
    assert found.pk == token.pk and found.site == site and found.user is None
    assert ApiToken.objects.get(pk=token.pk).last_used_at is not None
    assert token_authenticate(secret + "x") is None


def test_revoked_token_no_longer_authenticates(users):
    token, secret = token_create(user=users["viewer"])
    token_revoke(token=token)
    assert token_authenticate(secret) is None


def test_a_revoke_takes_effect_at_once_in_this_process_even_for_a_token_just_used(users):
    token, secret = token_create(user=users["viewer"])
    assert token_authenticate(secret) is not None
    token_revoke(token=token)
    assert token_authenticate(secret) is None


def test_a_revoke_elsewhere_takes_effect_after_the_trust_period(users, monkeypatch):
    monkeypatch.setattr(tokens, "TOKEN_TRUST_SECONDS", 0.3)
    token, secret = token_create(user=users["viewer"])
    assert token_authenticate(secret) is not None
    # Another web process revokes it: this process trusts what it checked a moment ago, then looks again.
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert token_authenticate(secret) is not None
    wait_until(lambda: token_authenticate(secret) is None, timeout=5, interval=0.05,
               message="the revoked token to be refused")


def test_token_belongs_to_exactly_one_site_or_user(users):
    with pytest.raises(ValueError):
        token_create()
    with pytest.raises(ValueError):
        token_create(site=Site.objects.create(name="s"), user=users["owner"])


def test_inactive_users_token_fails(users):
    _, secret = token_create(user=users["outsider"])
    users["outsider"].is_active = False
    users["outsider"].save()
    assert token_authenticate(secret) is None


@pytest.mark.parametrize("owner", ["site", "user"])
def test_api_token_command_prints_a_working_token(users, owner):
    Site.objects.create(name="site-1")
    out = io.StringIO()
    call_command("api_token", f"--{owner}", "site-1" if owner == "site" else "owner", stdout=out)
    secret = out.getvalue().strip()
    token = token_authenticate(secret)
    assert token is not None
    assert (token.site.name if owner == "site" else token.user.username) == ("site-1" if owner == "site" else "owner")
