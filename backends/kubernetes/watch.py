"""Kubernetes backend: the change streams behind `KubernetesBackend.stream()`. One WatchFeed thread
per resource, given the site's API client (api.KubeApi), lists, then watches from the last
resourceVersion, relists on 410 Gone and restarts silent watches every `watch_timeout` seconds;
Warning events arrive through a second feed.
"""

from __future__ import annotations

import json
import logging
import queue
import socket
import threading
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from backends.base import BackendError
from backends.kubernetes.api import KubeApi

log = logging.getLogger("backends.kubernetes")  # the name log lines had before the split


# ---------------------------------------------------------------------------------------------
# Watch feeds for stream()
# ---------------------------------------------------------------------------------------------


class WatchFeed(threading.Thread):
    """List then watch one resource from the last resourceVersion, forever, into `inbox`.

    The client's own Watch retries a 410 only once; here every 410 (HTTP or ERROR event) relists,
    and every dropped or timed-out watch resumes from the last resourceVersion seen."""

    def __init__(self, kind: str, list_fn: Callable[..., Any], api: KubeApi, inbox: queue.Queue,
                 halt: threading.Event, watch_timeout: float, **selectors: str):
        super().__init__(daemon=True, name=f"k8s-watch-{kind}")
        self.kind, self.list_fn, self.api, self.inbox, self.halt = kind, list_fn, api, inbox, halt
        self.watch_timeout = watch_timeout
        self.selectors = selectors
        self.resource_version: str | None = None
        self.resp: Any = None
        self.relists = 0

    def run(self) -> None:
        try:
            self._run()
        except BackendError as exc:
            if not self.halt.is_set():
                self.inbox.put(("error", None, exc))
        except Exception as exc:  # noqa: BLE001 - never die silently: the consumer must learn of it
            if not self.halt.is_set():
                self.inbox.put(("error", None, BackendError(f"watch of {self.kind} failed: {exc}", retryable=True)))

    def _run(self) -> None:
        api, timeout = self.api, self.watch_timeout
        while not self.halt.is_set():
            if self.resource_version is None:
                listing = api.call("list", self.kind, self.list_fn, api.namespace, **self.selectors)
                self.relists += 1
                self.resource_version = (listing.get("metadata") or {}).get("resourceVersion") or "0"
                for item in listing.get("items") or []:
                    self.inbox.put((self.kind, "SYNC", item))
            try:
                resp = self.list_fn(
                    api.namespace, watch=True, resource_version=self.resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=timeout, _preload_content=False,
                    _request_timeout=(api.config.request_timeout, timeout + api.config.request_timeout),
                    **self.selectors)
            except ApiException as exc:
                if exc.status == 410:
                    self.resource_version = None
                    continue
                raise api.api_error(exc, "watch", self.kind) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise BackendError(f"Kubernetes API unreachable (watch {self.kind}): {exc}", retryable=True) from exc
            self.resp = resp
            try:
                self._consume(resp)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.halt.is_set():
                    return
                log.info("watch of %s dropped (%s); resuming from %s", self.kind, exc, self.resource_version)
                self.halt.wait(0.05)  # no hot loop against a flapping server
            finally:
                self.resp = None
                shutdown_response(resp)

    def _consume(self, resp: Any) -> None:
        for line in iter_resp_lines(resp):
            if self.halt.is_set():
                return
            if not line.strip():
                continue
            event = json.loads(line)
            etype, obj = event.get("type"), event.get("object") or {}
            if etype == "ERROR":
                # 410 Gone (resourceVersion too old) or any other watch error: start over from a list.
                log.info("watch of %s: %s; relisting", self.kind, obj.get("message") or obj.get("reason"))
                self.resource_version = None
                return
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                self.inbox.put((self.kind, etype, obj))

    def close(self) -> None:
        """Unblock the reader at once; the feed thread closes the response itself."""
        resp = self.resp
        if resp is not None:
            shutdown_response(resp, close=False)


def shutdown_response(resp: Any, *, close: bool = True) -> None:
    """Unblock a thread reading a watch response (the client's own Watch.stop does the same).
    Closing from another thread would wait for the reader's buffer lock, hence `close=False`."""
    try:
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    if not close:
        return
    try:
        resp.close()
    except Exception:  # noqa: BLE001 - closing a half-dead response must never raise
        pass
