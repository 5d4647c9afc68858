"""The Docker backend's change stream, behind `DockerBackend.stream()`: the daemon's container events
of one site, read through the site's engine client (client.DockerApi) it is given, mapped by
observe.py. The feed keeps its position (the last event second and the events seen in it) between
streams, so a reconnect resumes where the last one stopped: a cursor, not job state.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from backends.base import (
    LABEL_MANAGED_BY,
    LABEL_SITE,
    MANAGED_BY,
    BackendError,
    Observation,
)
from backends.docker.client import DockerApi
from backends.docker.observe import STREAM_ACTIONS, event_key, observation_from_event

STOP_POLL_S = 0.5  # how often stream() looks at its stop event while the daemon is quiet


class EventFeed:
    def __init__(self, api: DockerApi, site: str):
        self.api = api
        self.site = site
        self._lock = threading.Lock()
        self._since: int | None = None  # stream()'s position (see stream())
        self._seen: set[tuple[str, int, str]] = set()

    def stream(self, stop: threading.Event, *, since: int | None = None) -> Iterator[Observation]:
        """Container events of this site, from `since` (epoch seconds) or where this feed's last
        stream stopped (on a new feed: from now). Events a resumed stream replays (the API resolves
        `since` to whole seconds) are dropped. Returns when `stop` is set; BackendError(retryable=True)
        if the daemon goes away."""
        client = self.api.client()
        filters = {
            "type": "container", "event": list(STREAM_ACTIONS),
            "label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_SITE}={self.site}"],
        }
        with self.api.errors("watch Docker events"):
            events = client.api.events(since=since if since is not None else self._since, filters=filters, decode=True)
        done = threading.Event()
        closer = threading.Thread(target=self._close_on_stop, args=(stop, done, events), daemon=True)
        closer.start()
        oom: set[str] = set()
        try:
            for event in events:
                observation = self._observation_for(event, oom)
                if observation is not None:
                    yield observation
                if stop.is_set():
                    return
        except Exception as exc:
            if stop.is_set():
                return
            raise BackendError(f"Docker event stream lost: {exc}", retryable=True) from exc
        finally:
            done.set()
            with contextlib.suppress(OSError):  # the daemon's side may have shut the socket first
                events.close()
        if not stop.is_set():
            raise BackendError("Docker event stream ended unexpectedly", retryable=True)

    @staticmethod
    def _close_on_stop(stop: threading.Event, done: threading.Event, events: Any) -> None:
        # The SDK reads events with no timeout; closing the socket is the only way to unblock it.
        while not done.is_set():
            if stop.wait(STOP_POLL_S):
                with contextlib.suppress(Exception):
                    events.close()
                return

    def _observation_for(self, event: Mapping[str, Any], oom: set[str]) -> Observation | None:
        key = event_key(event)
        second = key[1] // 1_000_000_000
        with self._lock:
            if key in self._seen:
                return None
            if self._since is None or second > self._since:
                self._seen = {k for k in self._seen if k[1] // 1_000_000_000 >= second}
                self._since = second
            self._seen.add(key)
        container_id = key[0]
        action = key[2]
        if action == "oom":
            oom.add(container_id)
        # No logs tail here: reading it is a daemon call, and the stream must not wait on one per
        # exit. Whoever records the exit reads the tail (logs()) before the container is removed.
        return observation_from_event(event, oom=container_id in oom, logs_tail=None)
