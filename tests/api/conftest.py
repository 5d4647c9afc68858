"""API fixtures: clients for each kind of caller (session users, user tokens, site tokens)."""

from __future__ import annotations

import pytest
from rest_framework.test import APIClient

from jobs.models import Role, Site, SiteMembership
from jobs.services.tokens import token_create


@pytest.fixture
def other_site(db, users, tmp_path):
    """site-2: the outsider is its admin; nobody from site-1 is a member."""
    ws = tmp_path / "ws-2"
    ws.mkdir()
    site = Site.objects.create(name="site-2", backend="process", process={"workspace": str(ws)})
    SiteMembership.objects.create(site=site, user=users["outsider"], role=Role.ADMIN)
    return site


@pytest.fixture
def as_user(users):
    """as_user("viewer") -> an APIClient logged in (session) as that user."""
    def make(name: str, *, csrf: bool = False) -> APIClient:
        client = APIClient(enforce_csrf_checks=csrf)
        if name != "anonymous":
            client.force_login(users[name])
        return client
    return make


@pytest.fixture
def site_token(db):
    """site_token(site) -> an APIClient authenticated with a new token of that site."""
    def make(site) -> APIClient:
        _, secret = token_create(site=site, name="fl-server")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        return client
    return make


@pytest.fixture
def user_token(users):
    def make(name: str) -> APIClient:
        _, secret = token_create(user=users[name], name="script")
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Token {secret}")
        return client
    return make


def launch_body(job_id: str, args: dict, **extra) -> dict:
    return {"site": "site-1", "job_id": job_id, "job_meta": {"job_id": job_id}, "job_args": args, **extra}
