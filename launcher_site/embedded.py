"""The embedded default: the Celery worker and beat run as threads inside the web process, on
Celery's in-memory transport, so tasks still run asynchronously (never eagerly inside a request).

The worker is Celery's documented embeddable worker, `app.WorkController` (the worker `celery
worker` runs, without the command line's banner, signal handlers and process-wide setup, which
belong to the process, here `manage.py serve`): started in a thread, stopped with its `stop()`."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
from collections.abc import Iterator

from celery.beat import EmbeddedService

from launcher_site.celery import app

START_TIMEOUT = STOP_TIMEOUT = 30  # seconds


@contextlib.contextmanager
def embedded_worker(*, concurrency: int = 4) -> Iterator[None]:
    connected = threading.Event()
    worker = app.WorkController(
        hostname=f"embedded-{os.getpid()}@{socket.gethostname()}", concurrency=concurrency, pool="threads",
        loglevel="WARNING", ready_callback=lambda consumer: connected.set(),
        # One worker, in this process: nothing to synchronise with or announce to other workers.
        without_heartbeat=True, without_mingle=True, without_gossip=True,
    )
    thread = threading.Thread(target=worker.start, name="celery-worker", daemon=True)
    thread.start()
    if not connected.wait(START_TIMEOUT):
        worker.stop()
        raise RuntimeError(f"the embedded Celery worker did not connect within {START_TIMEOUT} s")
    try:
        yield
    finally:
        worker.stop()  # warm: running tasks finish first
        thread.join(STOP_TIMEOUT)


@contextlib.contextmanager
def embedded_beat() -> Iterator[None]:
    beat = EmbeddedService(app, thread=True)
    beat.start()
    try:
        yield
    finally:
        beat.stop()
