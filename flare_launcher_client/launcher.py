"""NVFlare's JobLauncherSpec / JobHandleSpec on top of FLARE Launcher's REST API (/api/v1/).

No Django; only `requests`. nvflare is imported lazily, and only to subclass its spec classes and
read FLContext keys; without it the same classes work duck-typed (tests, other callers).

Credentials (JOB_PROCESS_ARGS auth_token / auth_signature / ssid) travel only in the launch request
body over the connection to the launcher; they are never logged here.
"""

from __future__ import annotations

import functools
import json
import logging
import time
from collections.abc import Mapping
from typing import Any

import requests

log = logging.getLogger("flare_launcher_client")

# NVFlare's JobReturnCode (nvflare.apis.job_launcher_spec), as plain ints.
SUCCESS, EXECUTION_ERROR, ABORTED, EXCEPTION, UNKNOWN = 0, 1, 9, 101, 127
TERMINAL_STATES = frozenset({"succeeded", "failed", "aborted", "launch_failed", "lost"})
STATE_RETURN_CODE = {"succeeded": SUCCESS, "failed": EXECUTION_ERROR, "aborted": ABORTED, "lost": ABORTED,
                     "launch_failed": EXCEPTION}
# FLContext keys (nvflare.apis.fl_constant.ReservedKey), so reading them needs no nvflare import.
JOB_PROCESS_ARGS_KEY = "__job_process_args__"
ARGS_KEY = "__args__"
BEFORE_JOB_LAUNCH = "_before_job_launch"
JOB_LAUNCHER_KEY = "_job_launcher"
# Job meta keys sent to the launcher: what affects a launch plus who submitted it. The rest of
# NVFlare's meta (approvals, deploy map, schedule history...) stays on the FL server.
META_KEYS = ("job_id", "name", "study", "resource_spec", "launcher_spec", "scope", "submitter_name",
             "submitter_org", "submitter_role")
WAIT_CHUNK_SECONDS = 55  # one long poll; the server allows at most 60
# Re-submit a job that is still queued after this long (the launcher re-launches it after its own
# LAUNCHER_RELAUNCH_AFTER_SECONDS, 5 s by default): a launch lost with a dying launcher process.
RESUBMIT_QUEUED_AFTER = 10


class LauncherError(RuntimeError):
    """The launcher refused or failed a request. `status` is the HTTP status (0: unreachable)."""

    def __init__(self, message: str, *, status: int = 0, body: Any = None):
        super().__init__(message)
        self.status = status
        self.body = body


class FlareLauncherClient:
    """The REST calls, with retries on connection errors and 502/503/504 (every call it retries
    is idempotent: a launch is keyed by (site, job_id))."""

    def __init__(self, url: str, token: str, *, request_timeout: float = 30.0, retries: int = 5,
                 backoff: float = 0.5, session: requests.Session | None = None):
        self.base = url.rstrip("/") + "/api/v1"
        self.request_timeout = request_timeout
        self.retries = retries
        self.backoff = backoff
        self.session = session or requests.Session()
        self.session.headers.update({"Authorization": f"Token {token}", "Accept": "application/json"})

    def request(self, method: str, path: str, *, body: Any = None, params: dict | None = None,
                timeout: float | None = None, retries: int | None = None) -> Any:
        retries = self.retries if retries is None else retries
        attempt = 0
        while True:
            try:
                response = self.session.request(method, self.base + path, json=body, params=params,
                                                timeout=timeout or self.request_timeout)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt >= retries:
                    raise LauncherError(f"FLARE Launcher unreachable: {type(exc).__name__}") from None
                log.warning("FLARE Launcher %s %s: %s; retrying", method, path, type(exc).__name__)
            else:
                if response.status_code in (502, 503, 504) and attempt < retries:
                    log.warning("FLARE Launcher %s %s answered %s; retrying", method, path, response.status_code)
                elif response.status_code >= 400:
                    raise LauncherError(f"FLARE Launcher {method} {path}: {response.status_code} {_detail(response)}",
                                        status=response.status_code, body=_json(response))
                else:
                    return _json(response)
            attempt += 1
            time.sleep(min(10.0, self.backoff * 2 ** (attempt - 1)))

    def launch(self, body: dict) -> dict:
        return self.request("POST", "/jobs/", body=body)

    def job(self, pk: int) -> dict:
        return self.request("GET", f"/jobs/{pk}/")

    def wait(self, pk: int, timeout: float) -> dict:
        return self.request("GET", f"/jobs/{pk}/wait/", params={"timeout": f"{timeout:g}"},
                            timeout=timeout + self.request_timeout)

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


def return_code_of(job: Mapping[str, Any]) -> int:
    """NVFlare's JobReturnCode for a job payload: 127 while it is not finished."""
    if job.get("state") not in TERMINAL_STATES:
        return UNKNOWN
    code = job.get("return_code")
    return int(code) if code is not None else STATE_RETURN_CODE[job["state"]]


class _JobHandle:
    """JobHandleSpec: poll / wait / terminate one launched job."""

    def __init__(self, client: FlareLauncherClient, job: dict):
        super().__init__()
        self.client = client
        self.job = job
        self.job_pk = job["id"]

    @property
    def job_id(self) -> str:
        return self.job["job_id"]

    def _terminal_code(self) -> int | None:
        return return_code_of(self.job) if self.job.get("state") in TERMINAL_STATES else None

    def poll(self) -> int:
        """Non-blocking: the return code, or 127 (UNKNOWN) while running. A terminal answer is kept."""
        cached = self._terminal_code()
        if cached is not None:
            return cached
        try:
            self.job = self.client.request("GET", f"/jobs/{self.job_pk}/", retries=1)
        except LauncherError as exc:
            log.warning("poll of job %s failed: %s", self.job_id, exc)
            return UNKNOWN
        return return_code_of(self.job)

    def wait(self) -> None:
        """Block until the job is finished, one long poll at a time (no busy polling)."""
        while self._terminal_code() is None:
            try:
                self.job = self.client.wait(self.job_pk, WAIT_CHUNK_SECONDS)
            except LauncherError as exc:
                if exc.status not in (0, 429, 502, 503, 504):
                    raise
                log.warning("wait for job %s: %s; retrying", self.job_id, exc)
                time.sleep(self.client.backoff)

    def terminate(self) -> None:
        """Ask the launcher to stop the job. Idempotent; a job that is already gone is fine."""
        if self._terminal_code() is not None:
            return
        try:
            self.job = self.client.terminate(self.job_pk)
        except LauncherError as exc:
            if exc.status != 404:
                raise


class _JobLauncher:
    """JobLauncherSpec: `launch_job(job_meta, fl_ctx) -> handle`.

    url/token/site: the FLARE Launcher service, a site API token, and this site's name there.
    timeout: seconds the job may take to leave queued/starting (None: no limit); past it the job is
    terminated and its handle reports 9, as NVFlare's Docker launcher does.
    role: "client" or "server"; by default taken from JOB_PROCESS_ARGS (client_name -> client).
    """

    def __init__(self, url: str, token: str, site: str, timeout: float | None = 60.0, role: str | None = None,
                 request_timeout: float = 30.0, retries: int = 5, poll_interval: float = 0.5):
        super().__init__()
        self.client = FlareLauncherClient(url, token, request_timeout=request_timeout, retries=retries)
        self.site = site
        self.timeout = timeout
        self.role = role
        self.poll_interval = poll_interval

    def handle_event(self, event_type: str, fl_ctx) -> None:
        """As NVFlare's launchers: offer ourselves for every job about to launch."""
        if event_type == BEFORE_JOB_LAUNCH:
            launchers = fl_ctx.get_prop(JOB_LAUNCHER_KEY, [])
            launchers.append(self)
            fl_ctx.set_prop(JOB_LAUNCHER_KEY, launchers, private=True, sticky=False)

    def launch_job(self, job_meta: dict, fl_ctx) -> Any:
        """Submit the job and wait until it runs (or ends, or `timeout` passes). Raises
        LauncherError when the launcher refuses the request (400/403): nothing was started."""
        job_id = job_meta.get("job_id")
        if not job_id:
            raise RuntimeError("missing JOB_ID in job_meta")
        job_args = _job_process_args(fl_ctx)
        if not job_args:
            raise RuntimeError(f"missing {JOB_PROCESS_ARGS_KEY} in FLContext")
        body = {
            "site": self.site,
            "job_id": job_id,
            "role": self.role or ("client" if "client_name" in job_args else "server"),
            "job_meta": _jsonable({k: job_meta[k] for k in META_KEYS if k in job_meta}),
            "job_args": {name: list(pair) if isinstance(pair, (list, tuple)) else pair for name, pair in job_args.items()},
            "set_options": [str(o) for o in _set_options(fl_ctx)],
        }
        job = self.client.launch(body)
        log.info("FLARE Launcher accepted job %s on site %s as #%s (%s)", job_id, self.site, job["id"], job["state"])
        handle = handle_class()(self.client, job)
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        resend_at = time.monotonic() + RESUBMIT_QUEUED_AFTER
        while handle.job["state"] in ("queued", "starting"):
            if deadline is not None and time.monotonic() >= deadline:
                log.warning("job %s did not start within %ss; terminating it", job_id, self.timeout)
                handle.terminate()
                break
            if handle.job["state"] == "queued" and time.monotonic() >= resend_at:
                # A launch lost with a dying launcher process is queued again by the same (idempotent)
                # submit; only this side still holds the job's credentials to send.
                log.info("job %s still queued; submitting it again", job_id)
                handle.job = self.client.launch(body)
                resend_at = time.monotonic() + RESUBMIT_QUEUED_AFTER
            time.sleep(self.poll_interval)
            handle.poll()
        return handle


def _job_process_args(fl_ctx) -> dict:
    if isinstance(fl_ctx, Mapping):  # tests and callers without nvflare
        return dict(fl_ctx.get(JOB_PROCESS_ARGS_KEY) or fl_ctx.get("job_process_args") or {})
    return dict(fl_ctx.get_prop(JOB_PROCESS_ARGS_KEY) or {})


def _set_options(fl_ctx) -> list:
    if isinstance(fl_ctx, Mapping):
        return list(fl_ctx.get("set_options") or [])
    args = fl_ctx.get_prop(ARGS_KEY)
    return list(getattr(args, "set", None) or [])


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _nvflare_specs() -> tuple[type, type] | None:
    try:
        from nvflare.apis.job_launcher_spec import JobHandleSpec, JobLauncherSpec
    except ImportError:
        return None
    return JobLauncherSpec, JobHandleSpec


@functools.cache
def launcher_class() -> type:
    specs = _nvflare_specs()
    bases = (_JobLauncher, specs[0]) if specs else (_JobLauncher,)
    return type("FlareLauncherJobLauncher", bases, {"__module__": __name__, "__doc__": _JobLauncher.__doc__})


@functools.cache
def handle_class() -> type:
    specs = _nvflare_specs()
    bases = (_JobHandle, specs[1]) if specs else (_JobHandle,)
    return type("FlareLauncherJobHandle", bases, {"__module__": __name__, "__doc__": _JobHandle.__doc__})


def __getattr__(name: str):
    if name == "FlareLauncherJobLauncher":
        return launcher_class()
    if name == "FlareLauncherJobHandle":
        return handle_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
