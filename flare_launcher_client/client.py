"""The REST calls to FLARE Launcher (/api/v1/) and where the site token comes from.

No Django, no nvflare; only `requests`. The token is never logged, never put in an error message
and never accepted as a literal component argument (see token_source).
"""

from __future__ import annotations

import json
import logging
import os
import random
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import requests

log = logging.getLogger("flare_launcher_client")

DEFAULT_TOKEN_ENV = "FLARE_LAUNCHER_TOKEN"
MAX_BACKOFF = 10.0  # seconds between two tries of one call, at most
# Statuses worth asking again: every 5xx (a server restarting, a proxy without upstream, a request
# cancelled at shutdown) and 429. All calls are idempotent: GETs, terminate, and the launch, which
# the launcher keys by (site, job_id).
RETRY_STATUSES = frozenset({429}) | frozenset(range(500, 600))


class LauncherError(RuntimeError):
    """The launcher refused or failed a request. `status` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, *, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class ConfigurationError(ValueError):
    """The launcher component is configured wrongly (no token, a token file inside the workspace)."""


def shown_url(url: str) -> str:
    """The URL for messages: without any user:password part."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, "", "")).rstrip("/")


class FlareLauncherClient:
    """The REST calls, each retried on connection errors, timeouts, 429 and every 5xx with capped,
    jittered exponential backoff (honouring Retry-After), `retries` times unless told otherwise.

    `token`: the site token, or a callable returning it (read again after a 401, so a rotated token
    file is picked up without a restart)."""

    def __init__(self, url: str, token: str | Callable[[], str], *, request_timeout: float = 30.0,
                 retries: int = 5, backoff: float = 0.5, max_backoff: float = MAX_BACKOFF,
                 session: requests.Session | None = None):
        self.url = shown_url(url)
        self.base = url.rstrip("/") + "/api/v1"
        self.request_timeout = request_timeout
        self.retries = retries
        self.backoff = backoff
        self.max_backoff = max_backoff
        self._token = token
        self.session = session or requests.Session()
        self.session.headers["Accept"] = "application/json"
        self.reload_token()

    def reload_token(self) -> None:
        """Read the token again from its source (a no-op for a plain string)."""
        token = self._token() if callable(self._token) else self._token
        self.session.headers["Authorization"] = f"Token {token}"

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds to sleep before try number `attempt` + 1 (attempt counts from 1)."""
        wait = min(self.max_backoff, self.backoff * 2 ** (attempt - 1)) * random.uniform(0.8, 1.0)
        if retry_after and retry_after.isdigit():
            wait = max(wait, min(float(retry_after), 6 * self.max_backoff))
        return wait

    def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                timeout: float | None = None, retries: int | None = None) -> Any:
        """One call: its JSON answer, or LauncherError once the retries are spent (or at once for a
        4xx other than 429)."""
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            attempt += 1
            retry_after = None
            try:
                response = self.session.request(method, self.base + path, json=body, params=params,
                                                timeout=timeout or self.request_timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                error = LauncherError(f"FLARE Launcher at {self.url} unreachable: {type(exc).__name__}")
            except requests.RequestException as exc:  # e.g. an invalid URL: asking again will not help
                raise LauncherError(f"FLARE Launcher at {self.url}: {method} {path}: {type(exc).__name__}") from None
            else:
                if response.status_code < 400:
                    answer = _json(response)
                    if isinstance(answer, dict):
                        return answer
                    # A 2xx that is not our JSON (a proxy's page): as unreliable as a 502.
                    error = LauncherError(f"FLARE Launcher at {self.url}: {method} {path}: {response.status_code} "
                                          "answer is not a JSON object", status=502)
                else:
                    error = LauncherError(
                        f"FLARE Launcher at {self.url}: {method} {path}: {response.status_code} {_detail(response)}",
                        status=response.status_code, body=_json(response))
                    if response.status_code not in RETRY_STATUSES:
                        raise error
                    retry_after = response.headers.get("Retry-After")
            if attempt > retries:
                raise error
            log.warning("%s; retrying", error)
            time.sleep(self.delay(attempt, retry_after))

    def launch(self, body: dict) -> dict:
        return self.request("POST", "/jobs/", body=body)

    def job(self, pk: int, *, retries: int | None = None) -> dict:
        return self.request("GET", f"/jobs/{pk}/", retries=retries)

    def wait(self, pk: int, timeout: float, *, until: str = "terminal", retries: int | None = None) -> dict:
        """One long poll: the job once `until` (terminal / running) holds, or as it is after `timeout`."""
        return self.request("GET", f"/jobs/{pk}/wait/", params={"timeout": f"{timeout:.3f}", "until": until},
                            timeout=timeout + self.request_timeout, retries=retries)

    def terminate(self, pk: int) -> dict:
        return self.request("POST", f"/jobs/{pk}/terminate/")


def _json(response: requests.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _detail(response: requests.Response) -> str:
    body = _json(response)
    return json.dumps(body)[:500] if body is not None else response.text[:200]


def token_source(*, token_env: str | None, token_file: str | None,
                 workspaces: list[str]) -> Callable[[], str]:
    """Where the site token comes from, checked now (ConfigurationError naming the setting).

    token_file, when given, wins over token_env. The file must lie outside every NVFlare workspace:
    not under `workspaces` (the FL parent's workspace), and not under a `local/` or `startup/`
    directory of any workspace (a directory next to a `startup/`), symlinks resolved: `local/` is
    mounted into Docker job containers and job processes read it. The token itself never appears in
    a message."""
    if token_file:
        path = check_token_file(token_file, workspaces)

        def read_file() -> str:
            token = path.read_text().strip()
            if not token:
                raise ConfigurationError(f"token_file {path} is empty")
            return token

        read_file()
        return read_file
    name = token_env or DEFAULT_TOKEN_ENV
    token = os.environ.get(name, "").strip()
    if not token:
        raise ConfigurationError(
            f"FLARE Launcher token: environment variable {name} is not set in the FL parent's environment "
            "(set it where the parent is started, or give `token_file`: a file outside the workspace)")
    return lambda: token


def check_token_file(token_file: str, workspaces: list[str]) -> Path:
    """The resolved token file, or ConfigurationError when it is missing or inside a workspace."""
    path = Path(token_file).expanduser()
    try:
        path = path.resolve(strict=True)
    except (OSError, RuntimeError):
        raise ConfigurationError(f"token_file {token_file}: no such file") from None
    if not path.is_file():
        raise ConfigurationError(f"token_file {token_file}: not a regular file")
    for workspace in workspaces:
        root = Path(workspace).expanduser().resolve()
        if path.is_relative_to(root):
            raise ConfigurationError(
                f"token_file {token_file} is inside the NVFlare workspace {root}: jobs can read it; "
                "keep it outside (e.g. /etc/nvflare/flare-launcher.token, mode 0600)")
    for folder in path.parents:
        if folder.name in ("local", "startup") and (folder.parent / "startup").is_dir():
            raise ConfigurationError(
                f"token_file {token_file} is under {folder}, a workspace's {folder.name}/ directory, which "
                "jobs can read; keep it outside the workspace")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        log.warning("token_file %s is readable by others (mode %o); make it 0600", path, mode)
    return path
