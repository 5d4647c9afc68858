"""Channel-layer groups and the one place that publishes job changes to them.

Publishing never blocks the caller (a watcher, a worker, a request) on the channel layer: messages
are handed to one long-lived event loop per process, which sends them in order. With the in-memory
layer (embedded mode) that loop is the ASGI server's own loop, because the in-memory layer's
queues may only be touched from the loop its consumers wait on. The layer is at-most-once: a send
that fails (Redis down) is logged and dropped; the database is the record and browsers resume.

Under load, job updates are batched per group (jobs.events._Cadence). A change goes out at once,
as its own frame, while the group's changes come no faster than the fast lane, FAST_LANE x
LAUNCHER_WS_FRAMES_PER_SECOND a second (30 at the default 5, in bursts of 5), and the group has
frames left: LAUNCHER_WS_FRAMES_PER_SECOND a second, up to FRAME_BURST_SECONDS times as many at once.
A group whose changes come faster leaves the fast lane and its burst: each change then waits, with
any that follow, for the group's next frame (one every 1 / LAUNCHER_WS_FRAMES_PER_SECOND seconds),
and they go out together as one group message, `{"type": "job.updates", "updates": [...]}`, which
consumers send as one frame; it is back in the fast lane once its changes have slowed down enough
to refill the lane's bucket (5 / 30 s). So a storm of exits (17 a second for a few seconds) reaches
a browser unbatched, while a sustained 50 changes a second reach each socket as 5 frames a second
instead of 50: each delivery to each socket costs a consumer wake-up and a socket write, and those,
not the changes, limit fan-out (bench/fanout.py). The frame budget is what keeps a storm that lasts
(17 changes a second to hundreds of browsers) from costing more than 5 frames a second for long.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import threading

from asgiref.sync import async_to_sync
from channels.layers import InMemoryChannelLayer, get_channel_layer
from django.conf import settings

from jobs.payloads import job_broadcast

log = logging.getLogger(__name__)
SEND_TIMEOUT = 5.0  # seconds one group_send may take before it is dropped
MAX_IN_FLIGHT = 5000  # sends queued on the publisher loop; beyond that new ones are dropped (and logged)
FRAME_BURST_SECONDS = 8  # a group may send this many seconds' worth of frames at once (40 at 5 a second)
FAST_LANE = 6  # changes a second, in frames a second, that go out at once, each in its own frame


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
        self._batches: dict[str, list[dict]] = {}  # group -> job updates waiting for its next frame
        self._cadences: dict[str, _Cadence] = {}  # group -> its send budget
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

    # On the publisher's loop from here on: _batches and _cadences are only touched there.

    def _route(self, loop, layer, group: str, message: dict) -> None:
        if loop is not self._batch_loop:  # a new server loop (embedded tests): the old one's timers died with it
            lost = sum(len(batch) for batch in self._batches.values())
            self._batch_loop, self._batches, self._cadences = loop, {}, {}
            if lost:
                self._done(lost)
        rate = settings.LAUNCHER_WS_FRAMES_PER_SECOND
        if message.get("type") != "job.update" or not rate:
            self._spawn(loop, layer, group, message, 1)
            return
        now = loop.time()
        cadence = self._cadence(group, now, rate)
        # In the fast lane while the group's changes come no faster than it. Leaving it costs the
        # frame burst, and coming back takes a full change bucket: a sustained rate, whose every
        # hiccup would otherwise let a few changes through at once, stays at `rate` frames a second.
        slow = cadence.changes < (rate if cadence.slow else 1)
        if slow and not cadence.slow:
            cadence.frames = min(cadence.frames, 1.0)
        cadence.slow, cadence.changes = slow, max(0.0, cadence.changes - 1)
        batch = self._batches.get(group)
        if batch is not None:  # a flush is already scheduled
            batch.append(message)
            return
        spacing = 1 / rate if cadence.slow else 0.0
        if cadence.frames >= 1 and now - cadence.last >= spacing:
            cadence.frames, cadence.last = cadence.frames - 1, now
            self._spawn(loop, layer, group, message, 1)
            return
        self._batches[group] = [message]
        loop.call_at(max(cadence.last + spacing, now + (1 - cadence.frames) / rate), self._flush, loop, layer, group)

    def _flush(self, loop, layer, group: str) -> None:
        batch = self._batches.pop(group)
        now = loop.time()
        cadence = self._cadence(group, now, settings.LAUNCHER_WS_FRAMES_PER_SECOND)
        cadence.frames, cadence.last = max(0.0, cadence.frames - 1), now
        message = batch[0] if len(batch) == 1 else {"type": "job.updates", "updates": batch}
        self._spawn(loop, layer, group, message, len(batch))

    def _cadence(self, group: str, now: float, rate: int) -> _Cadence:
        if len(self._cadences) > 1000:  # one per job group: forget those a fresh one would equal
            self._cadences = {g: c for g, c in self._cadences.items() if g in self._batches or not c.idle(now, rate)}
        cadence = self._cadences.get(group)
        if cadence is None:
            cadence = self._cadences[group] = _Cadence(rate, now)
        cadence.refill(now, rate)
        return cadence

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
                self._batch_loop, self._batches, self._cadences = None, {}, {}  # a forked child's copies
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


class _Cadence:
    """One group's send budget: frame tokens (`rate` a second, FRAME_BURST_SECONDS x rate at most)
    and fast-lane change tokens (FAST_LANE x rate a second, `rate` at most). Loop time throughout."""

    __slots__ = ("frames", "changes", "stamp", "last", "slow")

    def __init__(self, rate: int, now: float) -> None:
        self.frames, self.changes, self.stamp = float(rate * FRAME_BURST_SECONDS), float(rate), now
        self.last = -math.inf  # when the group's last frame went out
        self.slow = False  # out of the fast lane: frames every 1 / rate seconds

    def refill(self, now: float, rate: int) -> None:
        elapsed, self.stamp = max(0.0, now - self.stamp), now
        self.frames = min(rate * FRAME_BURST_SECONDS, self.frames + elapsed * rate)
        self.changes = min(rate, self.changes + elapsed * rate * FAST_LANE)

    def idle(self, now: float, rate: int) -> bool:
        """Both buckets full by now and no frame for a while: the same as a group never seen."""
        elapsed = now - self.stamp
        return (self.frames + elapsed * rate >= rate * FRAME_BURST_SECONDS
                and self.changes + elapsed * rate * FAST_LANE >= rate and now - self.last >= 1)  # (then `slow` ends anyway)


_publisher = _Publisher()
