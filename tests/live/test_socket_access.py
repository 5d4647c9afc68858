"""Websocket access, through the real ASGI application: the handshake's Origin must be exactly the
page's origin (scheme, host and port); an open socket's access is checked again on every heartbeat
and the socket is closed, with nothing more sent, once its user may no longer see the site."""

from __future__ import annotations

import asyncio

import pytest
from asgiref.sync import sync_to_async
from asgiref.testing import ApplicationCommunicator
from django.contrib.auth import get_user_model
from django.test import Client
from tests.live.communicator import WebsocketCommunicator

from backends.base import JobState
from jobs.models import Job, Role, Site, SiteMembership
from jobs.services.lifecycle import job_observe, verdict
from launcher_site.asgi import application
from tests.live.conftest import session_cookie

pytestmark = [pytest.mark.embedded, pytest.mark.django_db(transaction=True), pytest.mark.asyncio]


@pytest.fixture
def site_jobs(users):
    site = Site.objects.create(name="site-1")
    SiteMembership.objects.create(site=site, user=users["viewer"], role=Role.VIEWER)
    jobs = [Job.objects.create(site=site, job_id=f"j{i}", backend="process") for i in range(2)]
    return site, jobs


def communicator(path: str, *, origin: str | None, host: str = "127.0.0.1:8000", scheme: str = "ws",
                 cookie: str | None = None, extra: list | None = None) -> WebsocketCommunicator:
    headers = [(b"host", host.encode())] + ([(b"origin", origin.encode())] if origin is not None else [])
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    headers += extra or []
    made = WebsocketCommunicator.__new__(WebsocketCommunicator)  # as WebsocketCommunicator, with a scheme
    ApplicationCommunicator.__init__(made, application, {
        "type": "websocket", "path": path, "query_string": b"", "headers": headers, "subprotocols": [],
        "scheme": scheme, "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8000)})
    return made


@pytest.mark.parametrize("scheme, host, origin, allowed", [
    ("ws", "127.0.0.1:8000", "http://127.0.0.1:8000", True),  # the page's own origin
    ("ws", "127.0.0.1:8000", "HTTP://127.0.0.1:8000", True),
    ("wss", "127.0.0.1", "https://127.0.0.1", True),
    ("wss", "127.0.0.1:443", "https://127.0.0.1", True),  # default ports normalised
    ("ws", "127.0.0.1", "http://127.0.0.1:80", True),
    ("ws", "127.0.0.1:8000", "https://127.0.0.1:8000", False),  # wrong scheme
    ("wss", "127.0.0.1", "http://127.0.0.1", False),
    ("ws", "127.0.0.1:8000", "http://127.0.0.1:9000", False),  # wrong port
    ("ws", "127.0.0.1:8000", "http://127.0.0.1", False),
    ("ws", "127.0.0.1:8000", "http://localhost:8000", False),  # wrong host (though an allowed one)
    ("ws", "127.0.0.1:8000", "https://evil.example", False),
    ("ws", "127.0.0.1:8000", "null", False),
    ("ws", "127.0.0.1:8000", None, False),  # no Origin: no client without a browser has a socket to use
    ("ws", "evil.example:8000", "http://evil.example:8000", False),  # Host not in ALLOWED_HOSTS (rebinding)
    ("ws", "127.0.0.1:8000", "http://127.0.0.1:8000/path", False),
])
async def test_only_the_exact_origin_of_the_page_may_open_a_socket(site_jobs, users, scheme, host, origin, allowed):
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    socket = communicator("/ws/sites/site-1/jobs/", origin=origin, host=host, scheme=scheme, cookie=cookie)
    connected, _ = await socket.connect(timeout=5)
    assert connected is allowed
    if allowed:  # and really let in: not closed with 4401/4403 right after
        assert await socket.receive_nothing(timeout=0.3)
        await socket.disconnect()


@pytest.mark.parametrize("origin, allowed", [("https://launcher.example.org", True),
                                             ("https://ops.example.net", True), ("http://ops.example.net", False),
                                             ("https://launcher.example.org:8443", False)])
async def test_trusted_origins_are_allowed_exactly(site_jobs, users, settings, origin, allowed):
    settings.CSRF_TRUSTED_ORIGINS = ["https://launcher.example.org", "https://*.example.net"]
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    connected, _ = await communicator("/ws/sites/site-1/jobs/", origin=origin, cookie=cookie).connect(timeout=5)
    assert connected is allowed


async def test_behind_a_tls_proxy_the_forwarded_scheme_counts_as_for_csrf(site_jobs, users, settings):
    settings.SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    proxied = [(b"x-forwarded-proto", b"https")]
    ok, _ = await communicator("/ws/sites/site-1/jobs/", origin="https://127.0.0.1", host="127.0.0.1",
                               cookie=cookie, extra=proxied).connect(timeout=5)
    plain, _ = await communicator("/ws/sites/site-1/jobs/", origin="http://127.0.0.1", host="127.0.0.1",
                                  cookie=cookie, extra=proxied).connect(timeout=5)
    assert (ok, plain) == (True, False)


async def until_closed(socket, timeout: float) -> int:
    """Read (heartbeats, updates) until the server closes the socket; its close code."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        left = end - loop.time()
        assert left > 0, "the socket was not closed in time"
        try:
            message = await socket.receive_output(timeout=left)
        except TimeoutError:
            continue
        if message["type"] == "websocket.close":
            return message["code"]


def remove_membership(users):
    SiteMembership.objects.filter(user=users["viewer"]).delete()


def demote_staff(users):
    get_user_model().objects.filter(pk=users["staff"].pk).update(is_staff=False)


def deactivate(users):
    get_user_model().objects.filter(pk=users["viewer"].pk).update(is_active=False)


def change_password(users):
    user = get_user_model().objects.get(pk=users["viewer"].pk)
    user.set_password("a-new-password-123")
    user.save()


@pytest.mark.parametrize("who, path, revoke, code", [
    ("viewer", "/ws/sites/site-1/jobs/", remove_membership, 4403),
    ("viewer", "job", remove_membership, 4403),
    ("staff", "/ws/sites/site-1/jobs/", demote_staff, 4403),
    ("viewer", "/ws/sites/site-1/jobs/", deactivate, 4401),
    ("viewer", "/ws/sites/site-1/jobs/", change_password, 4401),
])
async def test_a_socket_is_closed_within_a_heartbeat_of_losing_access(site_jobs, users, settings, who, path,
                                                                      revoke, code):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    _, jobs = site_jobs
    if path == "job":
        path = f"/ws/jobs/{jobs[0].pk}/"
    cookie = await sync_to_async(session_cookie)(users[who])
    socket = communicator(path, origin="http://127.0.0.1:8000", cookie=cookie)
    assert (await socket.connect(timeout=5))[0]
    await sync_to_async(job_observe)(jobs[0].pk, verdict(JobState.STARTING), source="watcher")
    assert (await socket.receive_json_from(timeout=5))["type"] == "job.update"  # it was let in
    await sync_to_async(revoke)(users)
    assert await until_closed(socket, timeout=2.5) == code  # one heartbeat (first within 0.5-1 s) and margin
    await sync_to_async(job_observe)(jobs[0].pk, verdict(JobState.RUNNING), source="watcher")
    assert await socket.receive_nothing(timeout=1.5)  # no update, no heartbeat
    await socket.disconnect()


async def test_signing_out_closes_the_open_socket(site_jobs, users, settings):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    _, jobs = site_jobs
    browser = Client()
    await sync_to_async(browser.force_login)(users["viewer"])
    cookie = f"sessionid={browser.cookies['sessionid'].value}"
    socket = communicator("/ws/sites/site-1/jobs/", origin="http://127.0.0.1:8000", cookie=cookie)
    assert (await socket.connect(timeout=5))[0]
    assert await socket.receive_nothing(timeout=0.2)
    logout = await sync_to_async(browser.post)("/accounts/logout/")  # the dashboard's "Log out" button
    assert logout.status_code == 302
    assert await until_closed(socket, timeout=2.5) == 4401
    await sync_to_async(job_observe)(jobs[0].pk, verdict(JobState.STARTING), source="watcher")
    assert await socket.receive_nothing(timeout=1.5)
    await socket.disconnect()


async def test_a_socket_that_keeps_access_stays_open(site_jobs, users, settings):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    socket = communicator("/ws/sites/site-1/jobs/", origin="http://127.0.0.1:8000", cookie=cookie)
    assert (await socket.connect(timeout=5))[0]
    assert [(await socket.receive_json_from(timeout=3))["type"] for _ in range(3)] == ["heartbeat"] * 3
    await socket.disconnect()


async def test_a_socket_whose_access_cannot_be_checked_is_closed_to_reconnect(site_jobs, users, settings,
                                                                              monkeypatch):
    settings.LAUNCHER_WS_HEARTBEAT_SECONDS = 1
    cookie = await sync_to_async(session_cookie)(users["viewer"])
    socket = communicator("/ws/sites/site-1/jobs/", origin="http://127.0.0.1:8000", cookie=cookie)
    assert (await socket.connect(timeout=5))[0]

    def database_down(**kwargs):
        raise RuntimeError("database down")
    monkeypatch.setattr("jobs.consumers.socket_access", database_down)
    assert await until_closed(socket, timeout=2.5) == 1011  # not 4401/4403: the page reconnects
    await socket.disconnect()
