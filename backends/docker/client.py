"""The Docker backend's engine client: one site's daemon as the backend uses it. Built from the
site's configuration, it holds the SDK client (made at the first call) and nothing else; SDK
failures are translated into BackendError (unreachable daemon and 5xx: retryable). Safe to share
between threads. The backend (backend.py) and the event feed (watch.py) are given it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator

import docker
import requests
from docker.errors import APIError, DockerException, NotFound

from backends.base import BackendError, EngineUnreachable, connection_cause
from backends.docker.config import DockerSiteConfig

# The daemon is gone or going: refused, timed out, or a response cut off mid-body (ChunkedEncodingError).
CONNECTION_ERRORS = (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                     requests.exceptions.ChunkedEncodingError, ConnectionError)


class DockerApi:
    def __init__(self, config: DockerSiteConfig):
        self.config = config
        self._client: docker.DockerClient | None = None
        self._network_checked = False
        self._lock = threading.Lock()

    def client(self) -> docker.DockerClient:
        if self._client is None:
            with self._lock, self.errors("connect to Docker"):
                if self._client is None:
                    if self.config.docker_host:
                        self._client = docker.DockerClient(base_url=self.config.docker_host, timeout=self.config.timeout)
                    else:
                        self._client = docker.from_env(timeout=self.config.timeout)
        return self._client

    @contextlib.contextmanager
    def errors(self, action: str) -> Iterator[None]:
        """Translate SDK failures: unreachable daemon and 5xx -> retryable; other API errors -> permanent."""
        where = self.config.docker_host or os.environ.get("DOCKER_HOST") or "the default Docker socket"
        try:
            yield
        except BackendError:
            raise
        except APIError as exc:
            raise BackendError(f"cannot {action}: {exc.explanation or exc}", retryable=exc.is_server_error()) from exc
        except (*CONNECTION_ERRORS, DockerException) as exc:  # DockerException: the client's version probe failed
            # The cause in a few words: the SDK's own text is a nested urllib3 repr.
            raise EngineUnreachable(f"cannot {action}: Docker daemon at {where} is unreachable "
                                    f"({connection_cause(exc)})") from exc

    def ensure_network(self, client: docker.DockerClient, *, fresh: bool = False) -> None:
        """fresh: ask the daemon even when an earlier call found it (a connection test reports now)."""
        if self._network_checked and not fresh:
            return
        try:
            client.networks.get(self.config.network)
        except NotFound:
            self._network_checked = False  # removed since: launches look again too
            raise BackendError(
                f"Docker network {self.config.network!r} does not exist; create it with "
                f"`docker network create {self.config.network}` (the launcher never creates it)"
            ) from None
        self._network_checked = True
