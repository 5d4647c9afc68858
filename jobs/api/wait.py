"""GET /api/v1/jobs/{id}/wait/?timeout=S&until=terminal|running: long poll until the job is terminal
(or, with until=running, has left queued/starting) or S seconds pass.

An async Django view (DRF views are sync), so a waiting client holds no worker thread: it holds one
channel-layer subscription to the job's group and a timer. Authentication and the visibility check
reuse the API's own (TokenAuthentication with its failed-attempt throttle, then the session). Every
database read runs on the shared, bounded thread pool (thread_sensitive=False), never on a
per-request thread, so 100 waiters hold neither 100 busy threads nor 100 database connections. The database is checked after subscribing (no lost-update race) and again every
few seconds, because the channel layer is at-most-once: a dropped message costs latency, never a
wrong answer. Returns the job (jobs.payloads.job_payload, as GET /jobs/ lists it) either way; the
caller looks at `state`.

Shutdown: `manage.py serve` calls begin_shutdown() from its SIGINT/SIGTERM handler, before uvicorn's
own. Every open wait then answers at once with the job as it is (200, as when its timeout runs out),
and new ones answer without waiting, so no poll is still open when uvicorn's graceful period ends
and cancels what is left (a cancelled request is a 500, which an NVFlare parent took as final).
"""

from __future__ import annotations

import asyncio
import threading
import weakref

from channels.db import database_sync_to_async
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings
from django.http import JsonResponse
from django.views.decorators.csrf import csrf_exempt
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import exceptions, serializers
from rest_framework.authentication import SessionAuthentication
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs import events
from jobs.api import access
from jobs.api.auth import TokenAuthentication
from jobs.api.errors import exception_handler
from jobs.api.filters import FiniteNumberQueryField, query
from jobs.api.schema import JOB_PK_SCHEMA
from jobs.api.serializers import JobSerializer
from jobs.models import TERMINAL, Job
from jobs.payloads import broadcast_frame, job_payload

WAIT_MAX_SECONDS = 60  # the API's contract (the schema's maximum)
WAIT_DEFAULT_SECONDS = 30
# The server holds a poll at most settings.LAUNCHER_WAIT_HOLD_SECONDS (default 60): a longer `timeout`
# is answered with the job as it is when that runs out, which a client handles like any timeout.
# How often a waiter re-reads the job. The in-process layer is fed from worker threads whose sends
# may not wake this event loop promptly, so it is checked more often than Redis.
RECHECK_SECONDS_REDIS = 5.0
RECHECK_SECONDS_IN_MEMORY = 1.0
# `until`: the states that end the wait. "running" is what a launcher waits for before it returns.
UNTIL_STATES = {"terminal": frozenset(TERMINAL), "running": frozenset(TERMINAL) | {"running"}}
UNTIL_DEFAULT = "terminal"

_shutting_down = threading.Event()
_shutdown_events: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # event loop -> asyncio.Event


def begin_shutdown() -> None:
    """End every open wait of this process now, and make new ones answer at once. Safe from a signal
    handler (it only schedules on the loops) and idempotent; there is no way back."""
    _shutting_down.set()  # first, so a waiter that registers after the loop below still sees it
    for loop, event in list(_shutdown_events.items()):
        try:
            loop.call_soon_threadsafe(event.set)
        except RuntimeError:  # that loop is closed
            pass


def _shutdown_event() -> asyncio.Event:
    loop = asyncio.get_running_loop()
    event = _shutdown_events.get(loop)
    if event is None:
        event = _shutdown_events[loop] = asyncio.Event()
    if _shutting_down.is_set():
        event.set()
    return event


@csrf_exempt  # reads only; without this a POST would meet the CSRF middleware's HTML page, not the 405
async def job_wait(request, pk: str):
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"detail": f'Method "{request.method}" not allowed.'}, status=405, headers={"Allow": "GET"})
    pk = int(pk)  # the route takes 1-18 digits only
    try:
        payload = await _db(_authorised_payload)(request, pk)
        timeout, done = _wait_query(request)
    except exceptions.APIException as exc:
        return _error_response(exc, request)
    if payload["state"] in done or timeout == 0 or _shutting_down.is_set():
        return JsonResponse(payload)
    return JsonResponse(await _wait_for(pk, timeout, done) or payload)


async def _wait_for(pk: int, timeout: float, done: frozenset[str]) -> dict | None:
    """The job's payload once its state is in `done`, or its latest payload when the time is up or
    the server begins to shut down."""
    shutdown = _shutdown_event()
    layer = get_channel_layer()
    recheck = RECHECK_SECONDS_IN_MEMORY if isinstance(layer, InMemoryChannelLayer) else RECHECK_SECONDS_REDIS
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    channel = await layer.new_channel("wait.")
    group = events.job_group(pk)
    await layer.group_add(group, channel)
    # One receive for the whole wait, never cancelled by a timeout: the Redis layer unsubscribes
    # a channel whose receive is cancelled.
    receiver = asyncio.ensure_future(layer.receive(channel))
    stopping = asyncio.ensure_future(shutdown.wait())
    try:
        latest = await _db(_payload)(pk)  # after subscribing: nothing slips between
        next_check = loop.time() + recheck
        while latest is not None and latest["state"] not in done and not shutdown.is_set():
            now = loop.time()
            if now >= deadline:
                break
            ready, _ = await asyncio.wait({receiver, stopping}, timeout=min(deadline, next_check) - now,
                                          return_when=asyncio.FIRST_COMPLETED)
            if receiver in ready:
                message = receiver.result()
                receiver = asyncio.ensure_future(layer.receive(channel))
                if message.get("type") == "job.update" and "text" in message:
                    latest = broadcast_frame(message)["job"]  # as jobs.events.publish_job sent it
                continue
            if loop.time() >= next_check:
                latest = await _db(_payload)(pk)
                next_check = loop.time() + recheck
        return latest
    finally:
        receiver.cancel()
        stopping.cancel()
        try:
            await layer.group_discard(group, channel)
        except Exception:  # Redis gone: nothing left to clean up that outlives this process
            pass


def _db(function):
    # database_sync_to_async closes stale connections around the call, as a request would.
    return database_sync_to_async(function, thread_sensitive=False)


class WaitQuery(serializers.Serializer):
    timeout = FiniteNumberQueryField(required=False, min_value=0, max_value=WAIT_MAX_SECONDS)
    until = serializers.ChoiceField(choices=sorted(UNTIL_STATES), required=False)


def _wait_query(request) -> tuple[float, frozenset[str]]:
    """(`timeout`, the states that end the wait) from the query, 400 naming the parameter when
    `timeout` is not 0-60 seconds or `until` not one of UNTIL_STATES; the timeout is held at most
    LAUNCHER_WAIT_HOLD_SECONDS."""
    given = query(WaitQuery, request)
    value = given.get("timeout")
    timeout = min(WAIT_DEFAULT_SECONDS if value is None else value, settings.LAUNCHER_WAIT_HOLD_SECONDS)
    return timeout, UNTIL_STATES[given.get("until") or UNTIL_DEFAULT]


def _authorised_payload(django_request, pk: int) -> dict:
    request = Request(django_request, authenticators=[TokenAuthentication(), SessionAuthentication()])
    if not request.user or not request.user.is_authenticated:
        raise exceptions.NotAuthenticated()
    return job_payload(access.job_for(request, pk))


def _payload(pk: int) -> dict | None:
    job = Job.objects.select_related("site").filter(pk=pk).first()
    return job_payload(job) if job is not None else None


def _error_response(exc: exceptions.APIException, request) -> JsonResponse:
    response = exception_handler(exc, {"request": request, "view": None})
    data = response.data if response is not None else {"detail": str(exc)}
    status = response.status_code if response is not None else 500
    result = JsonResponse(data, status=status)
    if isinstance(exc, (exceptions.NotAuthenticated, exceptions.AuthenticationFailed)):
        result["WWW-Authenticate"] = TokenAuthentication.keyword
        result.status_code = 401
    if response is not None and response.get("Retry-After"):
        result["Retry-After"] = response["Retry-After"]
    return result


class JobWaitSchema(APIView):
    """Documentation only: lets drf-spectacular describe the async view (see `job_wait.cls`)."""

    never_forbidden = ("get",)  # a job the caller may not see is a 404
    negotiates_content = False  # a plain async view: JSON always, the body never read

    @extend_schema(
        operation_id="jobs_wait_retrieve",
        tags=["jobs"],
        parameters=[OpenApiParameter("id", JOB_PK_SCHEMA, OpenApiParameter.PATH, description="The job's `id`."),
                    OpenApiParameter("timeout", {"type": "number", "minimum": 0, "maximum": WAIT_MAX_SECONDS},
                                     description=f"Seconds to wait, 0-{WAIT_MAX_SECONDS} (default {WAIT_DEFAULT_SECONDS}); "
                                                 "the server may answer sooner (LAUNCHER_WAIT_HOLD_SECONDS), with the "
                                                 "job as it is then."),
                    OpenApiParameter("until", {"type": "string", "enum": sorted(UNTIL_STATES),
                                               "default": UNTIL_DEFAULT},
                                     description="What to wait for: `terminal` (default) returns once the job has "
                                                 "ended; `running` once it has left `queued`/`starting` (running or "
                                                 "already ended), which is what a launcher waits for before it "
                                                 "returns.")],
        responses=JobSerializer,
        description="Long poll: returns the job as soon as its state is what `until` asks for, or when `timeout` "
                    "runs out, or at once when the server begins to shut down (then `state` may not be it yet; "
                    "ask again). Waiting holds no server thread.",
    )
    def get(self, request, pk):  # pragma: no cover - never routed
        return Response(status=405)


# drf-spectacular documents a URL whose callback carries `.cls` (as APIView.as_view() sets it).
job_wait.cls = JobWaitSchema
job_wait.initkwargs = {}
