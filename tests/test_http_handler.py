"""launcher_site.http.OneHopASGIHandler, through the project's ASGI application: a request to a sync
view runs signals, middleware and view in one call on the sync thread; async views and streaming
responses keep Django's own path."""

from __future__ import annotations

import threading

import pytest
from asgiref.testing import ApplicationCommunicator
from django.core import signals

from launcher_site.asgi import application
from launcher_site.http import _view_is_sync

pytestmark = pytest.mark.embedded


async def http(path: str, *, method: str = "GET") -> tuple[int, dict[bytes, bytes], bytes]:
    scope = {"type": "http", "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "http_version": "1.1", "headers": [(b"host", b"127.0.0.1")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    communicator = ApplicationCommunicator(application, scope)
    await communicator.send_input({"type": "http.request", "body": b""})
    start = await communicator.receive_output(10)
    body = b""
    while True:
        message = await communicator.receive_output(10)
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await communicator.wait(10)
    return start["status"], {name.lower(): value for name, value in start["headers"]}, body


def test_sync_and_async_views_are_told_apart():
    assert _view_is_sync("/healthz")
    assert _view_is_sync("/api/v1/jobs/")
    assert _view_is_sync("/no/such/page/")  # the 404 page
    assert not _view_is_sync("/api/v1/jobs/7/wait/")  # the long poll


@pytest.fixture
def signal_threads():
    seen: dict[str, list[int]] = {"started": [], "finished": []}

    def started(**kwargs):
        seen["started"].append(threading.get_ident())

    def finished(**kwargs):
        seen["finished"].append(threading.get_ident())

    signals.request_started.connect(started)
    signals.request_finished.connect(finished)
    yield seen
    signals.request_started.disconnect(started)
    signals.request_finished.disconnect(finished)


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_a_sync_view_runs_with_its_signals_on_one_thread_off_the_loop(signal_threads):
    status, headers, body = await http("/healthz")
    assert status == 200 and b'"database": "ok"' in body
    assert headers[b"content-security-policy"].startswith(b"default-src 'self'")  # the middleware ran
    assert len(signal_threads["started"]) == 1 and signal_threads["started"] == signal_threads["finished"]
    assert signal_threads["started"][0] != threading.get_ident()  # not on the event loop


@pytest.mark.asyncio
@pytest.mark.django_db(transaction=True)
async def test_an_async_view_is_answered_on_djangos_own_path(signal_threads):
    status, _, body = await http("/api/v1/jobs/7/wait/")
    assert status == 401 and b"detail" in body  # no credentials: the view's own error answer
    assert len(signal_threads["started"]) == len(signal_threads["finished"]) == 1


@pytest.mark.asyncio
async def test_a_streamed_static_file_arrives_whole(signal_threads):
    status, headers, body = await http("/static/js/launcher.js")
    assert status == 200 and headers[b"content-type"].startswith(b"text/javascript")
    assert body.startswith(b"// Shared by every page") and body.rstrip().endswith(b"})();")
    assert len(signal_threads["finished"]) == 1  # closed once, after it was sent


async def post_chunks(path: str, chunks: list[bytes]) -> tuple[int, bytes]:
    """A POST whose body arrives in `chunks` with no Content-Length (chunked transfer)."""
    scope = {"type": "http", "method": "POST", "path": path, "raw_path": path.encode(), "query_string": b"",
             "root_path": "", "scheme": "http", "http_version": "1.1",
             "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 80)}
    communicator = ApplicationCommunicator(application, scope)
    for index, chunk in enumerate(chunks):
        await communicator.send_input({"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1})
    start = await communicator.receive_output(10)
    body = (await communicator.receive_output(10)).get("body", b"")
    await communicator.wait(10)
    return start["status"], body


@pytest.mark.asyncio
@pytest.mark.parametrize("path", ["/api/v1/jobs/", "/accounts/login/", "/api/v1/jobs/1/wait/"])
async def test_a_body_past_the_limit_is_413_as_it_arrives_on_every_path(path, settings):
    """Django spools bodies (uploads, chunked bodies without Content-Length) to disk with no limit
    of its own: the handler stops at LAUNCHER_MAX_BODY_BYTES, sync and async views alike."""
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 4096
    status, body = await post_chunks(path, [b"x" * 1024] * 8)
    assert status == 413
    if path.startswith("/api/"):
        assert body == b'{"detail": "Request body too large."}'
