"""GET /api/v1/jobs/{id}/wait/?timeout=S: long poll until the job is terminal or S seconds pass.

An async Django view (DRF views are sync), so a waiting client holds no worker thread: it holds one
channel-layer subscription to the job's group and a timer. Authentication and the visibility check
reuse the API's own (TokenAuthentication with its failed-attempt throttle, then the session). Every
database read runs on the shared, bounded thread pool (thread_sensitive=False), never on a
per-request thread, so 100 waiters hold neither 100 busy threads nor 100 database connections. The database is checked after subscribing (no lost-update race) and again every
few seconds, because the channel layer is at-most-once: a dropped message costs latency, never a
wrong answer. Returns the job (jobs.payloads.job_payload, as GET /jobs/ lists it) either way; the
caller looks at `state`.
"""

from __future__ import annotations

import asyncio

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


@csrf_exempt  # reads only; without this a POST would meet the CSRF middleware's HTML page, not the 405
async def job_wait(request, pk: str):
    if request.method not in ("GET", "HEAD"):
        return JsonResponse({"detail": f'Method "{request.method}" not allowed.'}, status=405, headers={"Allow": "GET"})
    pk = int(pk)  # the route takes 1-18 digits only
    try:
        payload = await _db(_authorised_payload)(request, pk)
        timeout = _timeout(request)
    except exceptions.APIException as exc:
        return _error_response(exc, request)
    if payload["state"] in TERMINAL or timeout == 0:
        return JsonResponse(payload)
    return JsonResponse(await _wait_terminal(pk, timeout) or payload)


async def _wait_terminal(pk: int, timeout: float) -> dict | None:
    """The job's payload once terminal, or its latest payload when the time is up."""
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
    try:
        latest = await _db(_payload)(pk)  # after subscribing: nothing slips between
        next_check = loop.time() + recheck
        while latest is not None and latest["state"] not in TERMINAL:
            now = loop.time()
            if now >= deadline:
                break
            done, _ = await asyncio.wait({receiver}, timeout=min(deadline, next_check) - now)
            if receiver in done:
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
        try:
            await layer.group_discard(group, channel)
        except Exception:  # Redis gone: nothing left to clean up that outlives this process
            pass


def _db(function):
    # database_sync_to_async closes stale connections around the call, as a request would.
    return database_sync_to_async(function, thread_sensitive=False)


class WaitQuery(serializers.Serializer):
    timeout = FiniteNumberQueryField(required=False, min_value=0, max_value=WAIT_MAX_SECONDS)


def _timeout(request) -> float:
    """`timeout` from the query (400 naming it when it is not 0-60 seconds), held at most
    LAUNCHER_WAIT_HOLD_SECONDS."""
    value = query(WaitQuery, request).get("timeout")
    return min(WAIT_DEFAULT_SECONDS if value is None else value, settings.LAUNCHER_WAIT_HOLD_SECONDS)


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
                                                 "job as it is then.")],
        responses=JobSerializer,
        description="Long poll: returns the job as soon as it is terminal, or when `timeout` runs out "
                    "(then `state` is not terminal yet). Waiting holds no server thread.",
    )
    def get(self, request, pk):  # pragma: no cover - never routed
        return Response(status=405)


# drf-spectacular documents a URL whose callback carries `.cls` (as APIView.as_view() sets it).
job_wait.cls = JobWaitSchema
job_wait.initkwargs = {}
