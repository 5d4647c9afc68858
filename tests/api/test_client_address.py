"""The client address the failed-token throttle counts by, through the real server `manage.py serve`
starts (uvicorn with the options serve passes it): X-Forwarded-For is believed only from
LAUNCHER_TRUSTED_PROXIES, so a client cannot pick a fresh address for each guess."""

from __future__ import annotations

import http.client
import threading

import pytest
import uvicorn
from django.core.cache import cache
from django.core.management import call_command

from jobs.management.commands import serve
from jobs.services.tokens import token_create
from tests.live.conftest import free_port
from tests.util import wait_until

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True)]  # the server reads in its own threads


@pytest.fixture
def server(settings, monkeypatch):
    """server(trusted_proxies) -> get(path, token, forwarded_for) against a uvicorn started as serve does."""
    settings.LAUNCHER_FAILED_TOKEN_LIMIT = 3
    settings.LAUNCHER_EMBEDDED = settings.LAUNCHER_RUN_WATCHERS = False  # just the web server
    monkeypatch.setattr(serve, "require_services", lambda: None)
    cache.clear()
    running = []

    def start(trusted: list[str]):
        settings.LAUNCHER_TRUSTED_PROXIES = trusted
        options = {}
        monkeypatch.setattr(serve.uvicorn, "run", lambda app, **kwargs: options.update(kwargs, app=app))
        port = free_port()
        call_command("serve", "--port", str(port))
        options.pop("workers", None)
        instance = uvicorn.Server(uvicorn.Config(**options))
        thread = threading.Thread(target=instance.run, daemon=True)
        thread.start()
        running.append((instance, thread))
        wait_until(lambda: instance.started, timeout=20, message="uvicorn to start")

        def get(token: str, forwarded_for: str | None = None) -> int:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
            headers = {"Authorization": f"Token {token}"}
            if forwarded_for:
                headers["X-Forwarded-For"] = forwarded_for
            connection.request("GET", "/api/v1/jobs/", headers=headers)
            status = connection.getresponse().status
            connection.close()
            return status
        return get

    yield start
    for instance, thread in running:
        instance.should_exit = True
        thread.join(20)
    cache.clear()


def test_forwarded_for_is_ignored_without_trusted_proxies(process_site, server):
    get = server([])
    # Each guess claims a new address; all of them are the peer's (127.0.0.1) all the same.
    assert [get("flr_wrong", f"10.0.0.{i}") for i in range(3)] == [401, 401, 401]
    assert get("flr_wrong", "10.0.0.99") == 429
    assert get("flr_wrong") == 429
    _, secret = token_create(site=process_site, name="fl-server")
    assert get(secret, "10.0.0.100") == 200  # a valid token passes regardless


def test_forwarded_for_is_honoured_from_a_trusted_proxy(process_site, server):
    get = server(["127.0.0.0/8"])
    assert [get("flr_wrong", "10.0.0.1") for _ in range(3)] == [401, 401, 401]
    assert get("flr_wrong", "10.0.0.1") == 429
    # The proxy appends the real peer: an address the client put in front is not believed.
    assert get("flr_wrong", "10.0.0.77, 10.0.0.1") == 429
    assert get("flr_wrong", "10.0.0.2") == 401  # another client behind the proxy is not throttled


def test_serve_passes_proxy_settings_to_uvicorn(settings):
    settings.LAUNCHER_TRUSTED_PROXIES = []
    assert serve.proxy_options() == {"proxy_headers": False}
    settings.LAUNCHER_TRUSTED_PROXIES = ["10.0.0.5", "192.168.0.0/16"]
    assert serve.proxy_options() == {"proxy_headers": True, "forwarded_allow_ips": ["10.0.0.5", "192.168.0.0/16"]}
