"""Channel-layer groups and the one place that publishes job changes to them.

Publishing never blocks the caller (a watcher, a worker, a request) on the channel layer: messages
are handed to one long-lived event loop per process, which sends them in order. With the in-memory
layer (embedded mode) that loop is the ASGI server's own loop, because the in-memory layer's
queues may only be touched from the loop its consumers wait on. The layer is at-most-once: a send
that fails (Redis down) is logged and dropped; the database is the record and browsers resume.

Under load, job updates are batched per group, with a token bucket: a group may send
LAUNCHER_WS_FRAMES_PER_SECOND frames a second (and as many at once after a quiet second). A job
update that finds a token goes out at once; one that does not waits, with any that follow, for the
next token, and they go out together as one group message, `{"type": "job.updates", "updates":
[...]}`, which consumers send as one frame. At 50 changes a second a socket then gets 5 frames a
second instead of 50 (each delivery to each socket costs a consumer wake-up and a socket write, and
those, not the changes, limit fan-out: bench/fanout.py), while changes a few hundred ms apart, the
usual case, are never held back.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from jobs.payloads import job_broadcast

log = logging.getLogger(__name__)
SEND_TIMEOUT = 5.0  # seconds one group_send may take before it is dropped
MAX_IN_FLIGHT = 5000  # sends queued on the publisher loop; beyond that new ones are dropped (and logged)


def job_group(job_pk: int) -> str:
    return f"job.{job_pk}"


def site_group(site_name: str) -> str:
    # Group names allow only ASCII letters, digits, '-', '_' and '.', which site names already are.
    return f"site.{site_name}"


def publish_job(job_pk: int, *, seq: int | None = None, job=None) -> None:
    """Send the job's current payload (jobs.payloads) to its job and site groups. Called after
    commit only (jobs.services.lifecycle, jobs.services.submission); `job`: the row as just
    committed, when the caller has it (a new job), which saves reading it back."""
    from jobs.models import Job

    if job is None:
        job = Job.objects.select_related("site").filter(pk=job_pk).first()
    if job is None:
        return
    # The browser's message is encoded once here rather than once per connected socket, and the group
    # message carries only what consumers route on: with hundreds of sockets per web process, the
    # per-socket decode and encode is what limits fan-out.
    message = job_broadcast(job, seq)
    send(job_group(job.pk), message)
    send(site_group(job.site.name), message)


def publish_log_lines(job_pk: int, site_name: str, lines: list[str]) -> None:
    """New output lines of a running job, to the job's page (not to site lists)."""
    if lines:
        send(job_group(job_pk), {"type": "job.log", "job": job_pk, "lines": lines})


def publish_logs_saved(job_pk: int) -> None:
    """A finished job's logs tail has been saved: its page shows that record from now on."""
    send(job_group(job_pk), {"type": "job.log", "job": job_pk, "lines": [], "saved": True})


def send(group: str, message: dict) -> None:
    """Queue one group message; returns at once. Order between sends of one process is kept."""
    layer = get_channel_layer()
    if layer is None:
        return
    _publisher.submit(layer, group, message)


def bind_server_loop(loop: asyncio.AbstractEventLoop) -> None:
    """Called by the consumers from the ASGI server's loop: in-memory layer sends go there."""
    _publisher.server_loop = loop


def flush(timeout: float = 5.0) -> bool:
    """Wait until every queued send has been attempted (tests, benchmarks, shutdown)."""
    return _publisher.flush(timeout)


class _Publisher:
    def __init__(self) -> None:
        self.server_loop: asyncio.AbstractEventLoop | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid: int | None = None
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)
        self._batches: dict[str, list[dict]] = {}  # group -> job updates waiting for its next token
        self._buckets: dict[str, tuple[float, float]] = {}  # group -> (frame tokens, loop time they were counted)
        self._batch_loop: asyncio.AbstractEventLoop | None = None  # the loop _batches' timers run on

    def submit(self, layer, group: str, message: dict) -> None:
        loop = self._target_loop(layer)
        if loop is None:  # in-memory layer and no server loop running here: send inline
            try:
                async_to_sync(layer.group_send)(group, message)
            except Exception:
                log.warning("could not publish to %s", group, exc_info=True)
            return
        with self._lock:
            if self._in_flight >= MAX_IN_FLIGHT:
                log.warning("publisher backlog full; dropped a message to %s", group)
                return
            self._in_flight += 1
        try:
            loop.call_soon_threadsafe(self._route, loop, layer, group, message)
        except RuntimeError:  # the loop closed between the check and the call
            self._done(1)

    # On the publisher's loop from here on: _batches and _buckets are only touched there.

    def _route(self, loop, layer, group: str, message: dict) -> None:
        if loop is not self._batch_loop:  # a new server loop (embedded tests): the old one's timers died with it
            lost = sum(len(batch) for batch in self._batches.values())
            self._batch_loop, self._batches, self._buckets = loop, {}, {}
            if lost:
                self._done(lost)
        rate = settings.LAUNCHER_WS_FRAMES_PER_SECOND
        if message.get("type") != "job.update" or not rate:
            self._spawn(loop, layer, group, message, 1)
            return
        batch = self._batches.get(group)
        if batch is not None:  # a flush is already scheduled
            batch.append(message)
            return
        tokens = self._refill(group, loop.time(), rate)
        if tokens >= 1:
            self._buckets[group] = (tokens - 1, loop.time())
            self._spawn(loop, layer, group, message, 1)
            return
        self._batches[group] = [message]
        loop.call_later((1 - tokens) / rate, self._flush, loop, layer, group)

    def _flush(self, loop, layer, group: str) -> None:
        batch = self._batches.pop(group)
        now = loop.time()
        self._buckets[group] = (max(0.0, self._refill(group, now, settings.LAUNCHER_WS_FRAMES_PER_SECOND) - 1), now)
        message = batch[0] if len(batch) == 1 else {"type": "job.updates", "updates": batch}
        self._spawn(loop, layer, group, message, len(batch))

    def _refill(self, group: str, now: float, rate: int) -> float:
        """The group's tokens now: a full bucket holds `rate` (one second's worth, the burst)."""
        if len(self._buckets) > 1000:  # one bucket per job group: forget the full ones
            self._buckets = {g: b for g, b in self._buckets.items() if b[0] + (now - b[1]) * rate < rate}
        tokens, stamp = self._buckets.get(group, (rate, now))
        return min(rate, tokens + (now - stamp) * rate)

    def _spawn(self, loop, layer, group: str, message: dict, count: int) -> None:
        loop.create_task(self._send(layer, group, message)).add_done_callback(lambda _: self._done(count))

    def _target_loop(self, layer) -> asyncio.AbstractEventLoop | None:
        if isinstance(layer, InMemoryChannelLayer):
            loop = self.server_loop
            if loop is None or loop.is_closed() or not loop.is_running():
                return None
            try:
                if asyncio.get_running_loop() is loop:  # never block the server loop on itself
                    return None
            except RuntimeError:
                pass
            return loop
        return self._own_loop()

    def _own_loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None or self._pid != os.getpid():  # first use, or a forked worker child
                self._loop = asyncio.new_event_loop()
                self._pid = os.getpid()
                self._in_flight = 0
                self._batch_loop, self._batches, self._buckets = None, {}, {}  # a forked child's copies
                threading.Thread(target=self._loop.run_forever, name="channel-publisher", daemon=True).start()
            return self._loop

    @staticmethod
    async def _send(layer, group: str, message: dict) -> None:
        try:
            await asyncio.wait_for(layer.group_send(group, message), timeout=SEND_TIMEOUT)
        except Exception as exc:  # Redis down: state is already committed; pushes resume when it returns
            log.warning("could not publish to %s: %s", group, exc or type(exc).__name__)

    def _done(self, count: int) -> None:
        with self._lock:
            self._in_flight -= count
            if self._in_flight <= 0:
                self._idle.notify_all()

    def flush(self, timeout: float) -> bool:
        with self._lock:
            return self._idle.wait_for(lambda: self._in_flight <= 0, timeout)


_publisher = _Publisher()
