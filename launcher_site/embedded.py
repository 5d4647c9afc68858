"""The embedded default: the Celery worker and beat run as threads inside the web process, on
Celery's in-memory transport, so tasks still run asynchronously (never eagerly inside a request)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from celery.beat import EmbeddedService
from celery.contrib.testing.worker import TestWorkController, _start_worker_thread

from launcher_site.celery import app


@contextlib.contextmanager
def embedded_worker(*, concurrency: int = 4) -> Iterator[None]:
    # _start_worker_thread is Celery's own helper for running a worker in a thread; the ping check
    # needs a test-only task, so it is skipped.
    with _start_worker_thread(app, concurrency=concurrency, pool="threads", loglevel="WARNING",
                              WorkController=TestWorkController, perform_ping_check=False):
        yield


@contextlib.contextmanager
def embedded_beat() -> Iterator[None]:
    beat = EmbeddedService(app, thread=True)
    beat.start()
    try:
        yield
    finally:
        beat.stop()
