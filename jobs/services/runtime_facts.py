"""Writers of the runtime facts /metrics reads (jobs.runtime_models): reconcile timings and drift,
backend errors that ended no job, and each web process's open websocket clients.

Each is written by the process that knows it, cheaply (one UPDATE ... SET n = n + 1, an insert
the first time), and never raises: a lost metric must not stop a watcher, a reconcile or a socket.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from datetime import timedelta
from functools import wraps

from channels.db import database_sync_to_async
from django.db import IntegrityError, connection, transaction
from django.db.models import F
from django.utils import timezone

from backends.base import BackendError, EngineUnreachable
from jobs.runtime_models import BackendErrorCount, ProcessGauge, ReconcileStats

log = logging.getLogger(__name__)
HOSTNAME = socket.gethostname()
ERROR_FLUSH_SECONDS = 5.0  # repeats of one (site, operation, reason) within this are written together
WEBSOCKET_CLIENTS = "websocket_clients"
PRUNE_AFTER = timedelta(hours=1)  # rows of processes gone this long are deleted


def _never_raise(function):
    @wraps(function)
    def wrapper(*args, **kwargs):
        try:
            return function(*args, **kwargs)
        except Exception:  # a metric is a report: losing one write must not stop the caller
            log.warning("runtime facts: %s failed", function.__name__, exc_info=True)
    return wrapper


def _upsert(model, keys: dict, increments: dict, values: dict) -> None:
    """UPDATE the row with increments (F + n) and values; INSERT it when missing (a concurrent
    insert of the same row loses the race in a savepoint and updates instead)."""
    changes = {**{k: F(k) + v for k, v in increments.items()}, **values}
    if model.objects.filter(**keys).update(**changes):
        return
    try:
        with transaction.atomic():
            model.objects.create(**keys, **increments, **values)
    except IntegrityError:
        model.objects.filter(**keys).update(**changes)


# ---------------------------------------------------------------------------------------------
# Reconcile
# ---------------------------------------------------------------------------------------------


@_never_raise
def reconcile_recorded(*, site_pk: int, seconds: float, drift: int | None) -> None:
    """One reconcile of a site ended after `seconds`: it corrected `drift` jobs (None: it failed)."""
    increments = {"runs": 1, "seconds_total": seconds, "failures": int(drift is None), "drift_total": drift or 0}
    _upsert(ReconcileStats, {"site_id": site_pk}, increments,
            {"last_seconds": seconds, "last_drift": drift, "last_at": timezone.now()})


# ---------------------------------------------------------------------------------------------
# Backend errors that end no job
# ---------------------------------------------------------------------------------------------


def error_reason(exc: BaseException) -> str:
    """A short, bounded label: the engine did not answer, it answered with an error that may pass
    (retryable) or one that will not."""
    if isinstance(exc, EngineUnreachable):
        return "engine_unreachable"
    if isinstance(exc, BackendError):
        return "engine_error_retryable" if exc.retryable else "engine_error"
    return "internal"


class _ErrorTally:
    """Counts per (site, operation, reason) in this process, written at most every
    ERROR_FLUSH_SECONDS per key: a loop failing every second (a log follower) costs one write per
    interval, not one per failure. What waits is written by a timer, so no count is left behind."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: dict[tuple, list] = {}  # key -> [count, last message]
        self.written: dict[tuple, float] = {}
        self.timer: threading.Timer | None = None
        self.flushing: threading.Thread | None = None  # the timer thread while it writes

    def add(self, key: tuple, message: str) -> None:
        now = time.monotonic()
        with self.lock:
            entry = self.pending.setdefault(key, [0, ""])
            entry[0] += 1
            entry[1] = message
            due = now - self.written.get(key, float("-inf")) >= ERROR_FLUSH_SECONDS
            if due:
                self.written[key] = now
                count, message = self.pending.pop(key)
            elif self.timer is None:
                self.timer = threading.Timer(ERROR_FLUSH_SECONDS, self.flush)
                self.timer.daemon = True
                self.timer.start()
        if due:
            _write_errors({key: [count, message]})

    def flush(self) -> None:
        with self.lock:
            pending, self.pending, self.timer = self.pending, {}, None
            self.flushing = threading.current_thread()
            now = time.monotonic()
            for key in pending:
                self.written[key] = now
        try:
            _write_errors(pending)
        finally:
            connection.close()  # a timer thread per flush: its connection must not outlive it
            with self.lock:
                if self.flushing is threading.current_thread():
                    self.flushing = None

    def discard(self) -> None:
        """Forget what is not written yet and wait for a write in progress (tests, before the test
        database is emptied: a late write from the timer thread would race that TRUNCATE)."""
        with self.lock:
            threads = [t for t in (self.timer, self.flushing) if t is not None]
            self.timer, self.pending, self.written = None, {}, {}
        for thread in threads:
            if isinstance(thread, threading.Timer):
                thread.cancel()
            thread.join(timeout=5)


_errors = _ErrorTally()


def discard_unwritten_errors() -> None:
    """Tests: no error count is written after this returns (see _ErrorTally.discard)."""
    _errors.discard()


@_never_raise
def _write_errors(pending: dict) -> None:
    now = timezone.now()
    for (site_pk, operation, reason), (count, message) in pending.items():
        _upsert(BackendErrorCount, {"site_id": site_pk, "operation": operation, "reason": reason}, {"count": count},
                {"last_at": now, "last_message": message[:300]})


@_never_raise
def backend_error_recorded(exc: BaseException, *, operation: str, site_pk: int | None = None,
                           site_name: str | None = None) -> None:
    """Count an error that ended no job. Each exception counts once, under the operation that saw it
    first (a reconcile failing inside a watcher's reconnect is a reconcile error, not also a watch error)."""
    if getattr(exc, "_launcher_counted", False):
        return
    try:
        exc._launcher_counted = True
    except AttributeError:
        pass
    if site_pk is None:
        from jobs.models import Site

        site_pk = Site.objects.filter(name=site_name).values_list("pk", flat=True).first()
        if site_pk is None:
            return
    _errors.add((site_pk, operation[:32], error_reason(exc)), str(exc))


# ---------------------------------------------------------------------------------------------
# Websocket clients
# ---------------------------------------------------------------------------------------------


class _ClientCount:
    """This process's open websocket clients. The row is written when the count changes (at most
    every WRITE_SECONDS, except when it drops to zero: no socket would be left to refresh it) and on
    every socket's heartbeat once WRITE_SECONDS have passed, so it stays fresh while clients are open;
    the scrape ignores a row older than ttl_seconds()."""

    WRITE_SECONDS = 5.0

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.value = 0
        self.written_value: int | None = None
        self.written_at = float("-inf")

    def change(self, delta: int) -> bool:
        """Apply `delta`; True when the row is due for a write (then call write())."""
        with self.lock:
            self.value = max(0, self.value + delta)
            now = time.monotonic()
            return self.value != self.written_value and (self.value == 0 or now - self.written_at >= self.WRITE_SECONDS)

    def beat_due(self) -> bool:
        with self.lock:
            return time.monotonic() - self.written_at >= self.WRITE_SECONDS

    @_never_raise
    def write(self) -> None:
        with self.lock:
            value, self.written_value, self.written_at = self.value, self.value, time.monotonic()
        now = timezone.now()
        _upsert(ProcessGauge, {"name": WEBSOCKET_CLIENTS, "process": f"{HOSTNAME}:{os.getpid()}"}, {},
                {"value": value, "updated_at": now})
        ProcessGauge.objects.filter(updated_at__lt=now - PRUNE_AFTER).delete()


websocket_clients = _ClientCount()


def websocket_ttl_seconds() -> float:
    """A live process refreshes its row at least once per heartbeat (plus WRITE_SECONDS)."""
    from django.conf import settings

    return 3 * settings.LAUNCHER_WS_HEARTBEAT_SECONDS + _ClientCount.WRITE_SECONDS


async def websocket_client_changed(delta: int) -> None:
    """A socket was accepted (+1) or closed (-1) in this process (jobs.consumers)."""
    if websocket_clients.change(delta):
        await database_sync_to_async(websocket_clients.write)()


async def websocket_clients_beat() -> None:
    """A socket's heartbeat: refreshes this process's row when due, so a live process stays counted."""
    if websocket_clients.beat_due():
        await database_sync_to_async(websocket_clients.write)()
