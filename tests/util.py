"""Small helpers for tests: wait on a condition with a timeout instead of sleeping, collect what a
backend's change stream yields, and the one way to reach the real Docker daemon (skip loudly by
hand, fail under `make test`)."""

from __future__ import annotations

import functools
import os
import queue
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, NoReturn

import pytest

BUILD_SCRIPT = Path(__file__).resolve().parent / "images" / "build.sh"


def wait_until(predicate, *, timeout: float = 10.0, interval: float = 0.02, message: str = "condition"):
    """Poll `predicate` until it returns a truthy value; return that value or fail after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {value!r})")
        time.sleep(interval)


class StreamCollector:
    """Runs backend.stream(stop, **kwargs) in a thread; what it yields is taken with next_for() or
    next_matching() (each seen observation is kept in `seen`), an exception it raised is `error`."""

    def __init__(self, backend, **kwargs: Any):
        self.stop = threading.Event()
        self.items: queue.Queue = queue.Queue()
        self.seen: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(backend, kwargs), daemon=True)
        self.thread.start()

    def _run(self, backend, kwargs: dict[str, Any]) -> None:
        try:
            for observation in backend.stream(self.stop, **kwargs):
                self.items.put((time.time(), observation))  # stamped on arrival
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            self.error = exc

    def next_for(self, ref: str, predicate, timeout: float = 10.0) -> tuple[float, Any]:
        """(arrival time, observation) of the next observation of `ref` that matches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                arrived, observation = self.items.get(timeout=0.05)
            except queue.Empty:
                continue
            self.seen.append(observation)
            if (ref is None or observation.ref == ref) and predicate(observation):
                return arrived, observation
        pytest.fail(f"no matching observation{f' for {ref}' if ref else ''} within {timeout}s; saw {self.seen!r}")

    def next_matching(self, predicate, timeout: float = 5.0) -> Any:
        """The next observation (of any workload) that matches."""
        return self.next_for(None, predicate, timeout)[1]

    def close(self, timeout: float = 3.0) -> float:
        """Set stop; the stream must return within `timeout`. Returns how long that took; what it
        yielded meanwhile is added to `seen`."""
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream() did not return after stop was set"
        elapsed = time.monotonic() - started
        while not self.items.empty():
            self.seen.append(self.items.get()[1])
        return elapsed


def skip_or_fail(message: str) -> NoReturn:
    """Skip loudly; but under LAUNCHER_REQUIRE_DOCKER=1 (`make test`, CI) a missing or unable
    engine is a failure, never a skip."""
    if os.environ.get("LAUNCHER_REQUIRE_DOCKER") == "1":
        pytest.fail(f"LAUNCHER_REQUIRE_DOCKER=1 and {message}", pytrace=False)
    pytest.skip(f"!!! SKIPPING: {message}")


def docker_client_or_skip(*, base_url: str | None = None, timeout: float = 10, images: bool = True) -> Any:
    """A client of the real dockerd (pinged), with the test images and network in place when
    `images` (tests/images/build.sh, which pulls nothing); skip_or_fail() when it is not there."""
    import docker

    try:
        client = docker.DockerClient(base_url=base_url, timeout=timeout) if base_url else docker.from_env(timeout=timeout)
        client.ping()
    except Exception as exc:  # any reason the daemon is not there
        skip_or_fail(f"the Docker daemon is unreachable ({exc}); start it with "
                     "`(setsid dockerd >/var/log/dockerd.log 2>&1 &)`")
    if images:
        _build_images()
    return client


@functools.cache
def _build_images() -> None:
    """tests/images/build.sh, once per test process: it is idempotent, but not free."""
    subprocess.run([str(BUILD_SCRIPT)], check=True, timeout=120)


def docker_workspace(path, *, uid: int = 1000):
    """A Docker site workspace a save accepts (jobs.services.site_checks runs the launch-time checks):
    startup/ and local/ inside, owned by an unprivileged job user."""
    import os

    for sub in ("startup", "local"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    os.chown(path, uid, uid)
    return path


async def async_wait_until(predicate, *, timeout: float = 10.0, interval: float = 0.05, message: str = "condition"):
    """wait_until for a coroutine `predicate`, on the running loop."""
    import asyncio

    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message} (last value: {value!r})")
        await asyncio.sleep(interval)
