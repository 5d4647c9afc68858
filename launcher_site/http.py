"""Django's ASGI handler, with one thread hop per request to a sync view.

With sync middleware, Django's own ASGI handler crosses between the event loop and its sync thread
four times for every request to a sync view: the request_started signal, the middleware chain, the
view (the chain calls back into the loop, which hops again), and response.close(). On this 2-core
machine that plumbing was about a third of the CPU of an API submit (bench/submit.py). Here a
request whose view is sync runs as under WSGI, signals and middleware and view in one call on the
sync thread; async views (the long-poll wait) and streaming responses (static files) keep Django's
own path.

That call runs on a pool of threads kept for the process. Django would start a thread for each
request (its per-request ThreadSensitiveContext) and join it afterwards; the whole request is one
call here, so nothing needs to stay on a thread of its own across calls.

Every request body is bounded here, as it arrives: Django spools a body (file uploads, a chunked
body without Content-Length) to disk without a limit of its own, so a body past
LAUNCHER_MAX_BODY_BYTES is answered 413 before it is read further.
"""

from __future__ import annotations

import functools
import json
import tempfile
from concurrent.futures import ThreadPoolExecutor

from asgiref.sync import iscoroutinefunction, sync_to_async
from django.conf import settings
from django.core import signals
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler, get_script_prefix
from django.core.handlers.base import BaseHandler
from django.urls import Resolver404, get_resolver, set_script_prefix

REQUEST_THREADS = 8  # sync requests a web process serves at once (one slow engine call holds one)


class BodyTooLarge(Exception):
    """The request body passed LAUNCHER_MAX_BODY_BYTES while it was being read."""


class OneHopASGIHandler(ASGIHandler):
    def __init__(self):
        super().__init__()
        self.sync_handler = BaseHandler()
        self.sync_handler.load_middleware(is_async=False)  # the same middleware, as WSGI runs it
        self.threads = ThreadPoolExecutor(max_workers=REQUEST_THREADS, thread_name_prefix="request")

    async def handle(self, scope, receive, send):
        try:
            if not self.view_is_sync(scope):
                return await super().handle(scope, receive, send)
            try:
                body_file = await self.read_body(receive)
            except RequestAborted:
                return
        except BodyTooLarge:
            return await self.send_too_large(scope, send)
        set_script_prefix(get_script_prefix(scope))
        try:
            response = await sync_to_async(self.respond, thread_sensitive=False, executor=self.threads)(scope, body_file)
            try:
                await self.send_response(response, send)
            finally:
                if response.streaming:  # a file is read while it is sent: closed afterwards, as Django does
                    await sync_to_async(response.close)()
        finally:
            body_file.close()

    async def read_body(self, receive):
        """Django's read_body, stopping at LAUNCHER_MAX_BODY_BYTES (BodyTooLarge)."""
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE  # LAUNCHER_MAX_BODY_BYTES
        body_file = tempfile.SpooledTemporaryFile(max_size=settings.FILE_UPLOAD_MAX_MEMORY_SIZE, mode="w+b")
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                body_file.close()
                raise RequestAborted()
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                body_file.close()
                raise BodyTooLarge()
            body_file.write(chunk)
            if not message.get("more_body", False):
                break
        body_file.seek(0)
        return body_file

    @staticmethod
    async def send_too_large(scope, send) -> None:
        """413 in the API's error shape for /api/, plain text elsewhere; the rest of the body is never read."""
        if scope["path"].startswith("/api/"):
            body, kind = json.dumps({"detail": "Request body too large."}).encode(), b"application/json"
        else:
            body, kind = b"Request body too large.\n", b"text/plain; charset=utf-8"
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", kind), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    def respond(self, scope, body_file):
        """On the sync thread: what WSGIHandler.__call__ does, up to the response."""
        signals.request_started.send(sender=self.__class__, scope=scope)
        request, response = self.create_request(scope, body_file)
        if request is not None:
            response = self.sync_handler.get_response(request)
            response._handler_class = self.__class__
        if not response.streaming:
            response.close()  # its content is in memory; this sends request_finished
        return response

    @staticmethod
    def view_is_sync(scope) -> bool:
        return _view_is_sync(scope["path"].removeprefix(scope.get("root_path", "")))


@functools.lru_cache(maxsize=4096)  # resolving costs as much as the rest of this handler; most paths repeat
def _view_is_sync(path: str) -> bool:
    try:
        match = get_resolver().resolve(path)
    except Resolver404:
        return True  # the 404 page is sync
    return not iscoroutinefunction(match.func)
