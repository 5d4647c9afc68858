"""NVFlare's JobLauncherSpec / JobHandleSpec on top of FLARE Launcher's REST API (/api/v1/).

No Django; only `requests` (flare_launcher_client.client). nvflare is imported lazily, and only to
subclass its spec classes and read FLContext keys; without it the same classes work duck-typed.

Credentials (JOB_PROCESS_ARGS auth_token / auth_signature / ssid) travel only in the launch request
body over the connection to the launcher; neither they nor the site token are ever logged.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

from flare_launcher_client.client import (
    DEFAULT_TOKEN_ENV,
    ConfigurationError,
    FlareLauncherClient,
    LauncherError,
    check_token_file,
    token_source,
)

log = logging.getLogger("flare_launcher_client")

# NVFlare's JobReturnCode and ProcessExitCode (nvflare.apis.job_launcher_spec,
# nvflare.fuel.common.exit_codes), as plain ints.
SUCCESS, EXECUTION_ERROR, ABORTED, EXCEPTION, INFRASTRUCTURE_ERROR, UNKNOWN = 0, 1, 9, 101, 104, 127
TERMINAL_STATES = frozenset({"succeeded", "failed", "aborted", "launch_failed", "lost"})
# Used only when the launcher's answer carries no return_code. A launch that failed without a code
# never started a workload: NVFlare's parents report that as 104, as the launcher does.
STATE_RETURN_CODE = {"succeeded": SUCCESS, "failed": EXECUTION_ERROR, "aborted": ABORTED, "lost": ABORTED,
                     "launch_failed": INFRASTRUCTURE_ERROR}
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
# Between two failed waits: up to this long while the launcher is down or refuses us.
WAIT_RETRY_MAX_SECONDS = 30.0
EARLY_ANSWER_PAUSE = 0.25
LITERAL_TOKEN_REFUSED = (
    "FlareLauncherJobLauncher: a literal `token` argument is refused: resources files under local/ are read "
    "by job processes and mounted into job containers, and NVFlare prints a failing component, args included, "
    "into its logs. Remove `token` and set the site token in the FL parent's environment variable "
    "(`token_env`, default {env}) or in a file outside the workspace (`token_file`).")


def return_code_of(job: Mapping[str, Any]) -> int:
    """NVFlare's JobReturnCode for a job payload: the launcher's return_code when it gives one,
    else one derived from the state; 127 while it is not finished."""
    if job.get("state") not in TERMINAL_STATES:
        return UNKNOWN
    code = job.get("return_code")
    return int(code) if code is not None else STATE_RETURN_CODE[job["state"]]


class _JobHandle:
    """JobHandleSpec: poll / wait / terminate one launched job.

    poll() and wait() never raise. What wait() does with each answer of the launcher:
    - the job terminal: returns; poll() then gives its return code (the launcher's return_code);
    - unreachable, 429, any 5xx, a timeout or a garbled answer: logs a warning and asks again, with
      capped backoff, for as long as it takes (a restarting launcher must not end an NVFlare job);
    - 404: the job is gone from the launcher (deleted, or the site renamed): nothing will ever report
      its end, so it counts as ended, state "lost", return code 9 (ABORTED);
    - 401/403 (token revoked or rotated, site access removed): the job may well still be running, so
      it is not declared ended; an error is logged, the token is read again from its source (a rotated
      token file recovers without a restart) and the wait goes on.
    """

    def __init__(self, client: FlareLauncherClient, job: dict, *, retry_max_seconds: float = WAIT_RETRY_MAX_SECONDS):
        super().__init__()
        self.client = client
        self.retry_max_seconds = retry_max_seconds
        self.job = job
        self.job_pk = job["id"]
        self._failures = 0

    @property
    def job_id(self) -> str:
        return self.job["job_id"]

    def _terminal_code(self) -> int | None:
        return return_code_of(self.job) if self.job.get("state") in TERMINAL_STATES else None

    def poll(self) -> int:
        """Non-blocking: the return code, or 127 (UNKNOWN) while running or while the launcher does not
        answer. A terminal answer is kept."""
        cached = self._terminal_code()
        if cached is not None:
            return cached
        try:
            self._take(self.client.job(self.job_pk, retries=1))
        except LauncherError as exc:
            if exc.status == 404:
                self._gone(exc)
            else:
                log.warning("poll of job %s: %s", self.job_id, exc)
        except Exception as exc:  # noqa: BLE001 - NVFlare's poller thread must not die of it
            log.warning("poll of job %s: %s", self.job_id, type(exc).__name__)
        return return_code_of(self.job)

    def wait(self) -> None:
        """Block until the job is finished, one long poll at a time (no busy polling). Never raises."""
        while self._terminal_code() is None:
            self.wait_once(WAIT_CHUNK_SECONDS)

    def wait_once(self, timeout: float, until: str = "terminal") -> None:
        """One long poll of at most `timeout` seconds; on a failed one, log and sleep the backoff.
        Never raises (see the class docstring for what each answer means)."""
        before, started = self.job.get("state"), time.monotonic()
        try:
            self._take(self.client.wait(self.job_pk, timeout, until=until, retries=0))
            self._failures = 0
            if self.job["state"] == before and time.monotonic() - started < min(timeout, 1.0) / 2:
                # Answered at once with nothing new (a server shutting down does that): no hot loop.
                time.sleep(EARLY_ANSWER_PAUSE)
            return
        except LauncherError as exc:
            if exc.status == 404:
                self._gone(exc)
                return
            self._failures += 1
            if exc.status in (401, 403):
                log.error("waiting for job %s: %s; is the site token still valid? Asking again", self.job_id, exc)
                try:
                    self.client.reload_token()
                except Exception as reload_error:  # noqa: BLE001 - keep waiting with the old one
                    log.error("reading the FLARE Launcher token again: %s", reload_error)
            else:
                log.warning("waiting for job %s: %s; asking again", self.job_id, exc)
        except Exception as exc:  # noqa: BLE001 - a bug here must not end NVFlare's waiting thread
            self._failures += 1
            log.exception("waiting for job %s: %s; asking again", self.job_id, type(exc).__name__)
        time.sleep(min(self.retry_max_seconds, self.client.delay(self._failures)))

    def _take(self, job: Any) -> None:
        if not isinstance(job, dict) or job.get("id") != self.job_pk or "state" not in job:
            raise LauncherError(f"FLARE Launcher at {self.client.url}: unexpected answer for job #{self.job_pk}",
                                status=502)
        self.job = job

    def _gone(self, exc: LauncherError) -> None:
        log.error("job %s (#%s) is gone from FLARE Launcher (%s); reporting it aborted", self.job_id,
                  self.job_pk, exc)
        self.job = {**self.job, "state": "lost", "return_code": ABORTED}

    def terminate(self, heartbeat_cleanup: bool = False) -> None:
        """Ask the launcher to stop the job. Idempotent; a job that is already gone is fine. Raises
        LauncherError when the launcher cannot be reached after the client's retries.
        `heartbeat_cleanup`: NVFlare 2.9's client executor passes it when it stops a job whose
        heartbeat was lost; the job is stopped the same way."""
        if self._terminal_code() is not None:
            return
        try:
            self._take(self.client.terminate(self.job_pk))
        except LauncherError as exc:
            if exc.status != 404:
                raise


class _JobLauncher:
    """JobLauncherSpec: `launch_job(job_meta, fl_ctx) -> handle`.

    url/site: the FLARE Launcher service and this site's name there.
    token_env / token_file: where the site token is (flare_launcher_client.client.token_source): the
    parent's environment variable (default FLARE_LAUNCHER_TOKEN), or a file outside the workspace.
    A literal `token` argument is refused (LITERAL_TOKEN_REFUSED): every launch then fails with that
    message. The constructor does not raise for it, because NVFlare would print the component, token
    included, with the error.
    workspace: the FL parent's workspace (default: the current directory when it holds startup/);
    the token file must lie outside it, and outside each job's workspace.
    timeout: seconds the job may take to leave queued/starting (None: no limit); past it the job is
    terminated and its handle reports 9, as NVFlare's Docker launcher does.
    role: "client" or "server"; by default taken from JOB_PROCESS_ARGS (client_name -> client).
    resubmit_queued_after: seconds a job may stay queued before it is submitted again.
    """

    def __init__(self, url: str, site: str, token_env: str | None = DEFAULT_TOKEN_ENV, token_file: str | None = None,
                 timeout: float | None = 60.0, role: str | None = None, workspace: str | None = None,
                 request_timeout: float = 30.0, retries: int = 5, token: Any = None,
                 resubmit_queued_after: float = RESUBMIT_QUEUED_AFTER):
        super().__init__()
        self.site = site
        self.resubmit_queued_after = resubmit_queued_after
        self.timeout = timeout
        self.role = role
        self.token_file = token_file
        self.refused = LITERAL_TOKEN_REFUSED.format(env=token_env or DEFAULT_TOKEN_ENV) if token is not None else None
        if self.refused:
            log.error("%s", self.refused)
            source = _no_token
        else:
            workspaces = [workspace] if workspace else []
            if os.path.isdir(os.path.join(os.getcwd(), "startup")):
                workspaces.append(os.getcwd())
            source = token_source(token_env=token_env, token_file=token_file, workspaces=workspaces)
        self.client = FlareLauncherClient(url, source, request_timeout=request_timeout, retries=retries)

    def handle_event(self, event_type: str, fl_ctx) -> None:
        """As NVFlare's launchers: offer ourselves for every job about to launch."""
        if event_type == BEFORE_JOB_LAUNCH:
            launchers = fl_ctx.get_prop(JOB_LAUNCHER_KEY, [])
            launchers.append(self)
            fl_ctx.set_prop(JOB_LAUNCHER_KEY, launchers, private=True, sticky=False)

    def launch_body(self, job_meta: dict, job_args: dict, fl_ctx) -> dict:
        """The launch request: the one place its body is built."""
        body = {
            "site": self.site,
            "job_id": job_meta["job_id"],
            "role": self.role or ("client" if "client_name" in job_args else "server"),
            "job_meta": _jsonable({k: job_meta[k] for k in META_KEYS if k in job_meta}),
            "job_args": {name: list(pair) if isinstance(pair, (list, tuple)) else pair for name, pair in job_args.items()},
            "set_options": [str(o) for o in _set_options(fl_ctx)],
        }
        return body

    def launch_job(self, job_meta: dict, fl_ctx) -> Any:
        """Submit the job and wait until it runs (or ends, or `timeout` passes), one long poll at a
        time. Raises LauncherError when the launcher refuses the request (4xx) or stays unreachable
        through the client's retries: nothing was started. Idempotent per (site, job_id)."""
        if self.refused:
            raise LauncherError(self.refused)
        job_id = job_meta.get("job_id")
        if not job_id:
            raise RuntimeError("missing JOB_ID in job_meta")
        job_args = _job_process_args(fl_ctx)
        if not job_args:
            raise RuntimeError(f"missing {JOB_PROCESS_ARGS_KEY} in FLContext")
        self._check_token_outside(job_args)
        body = self.launch_body(job_meta, job_args, fl_ctx)
        started = time.monotonic()
        job = self.client.launch(body)
        log.info("FLARE Launcher accepted job %s on site %s as #%s (%s)", job_id, self.site, job["id"], job["state"])
        handle = handle_class()(self.client, job)
        deadline = None if self.timeout is None else started + self.timeout
        resend_at = time.monotonic() + self.resubmit_queued_after
        reported = job.get("detail")
        while handle.job["state"] in ("queued", "starting"):
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                log.warning("job %s did not start within %ss; terminating it", job_id, self.timeout)
                handle.terminate()  # unreachable: raises, and NVFlare counts the launch as failed
                break
            if handle.job["state"] == "queued" and now >= resend_at:
                # A launch lost with a dying launcher process is queued again by the same (idempotent)
                # submit; only this side still holds the job's credentials to send.
                log.info("job %s still queued; submitting it again", job_id)
                try:
                    handle._take(self.client.launch(body))
                except LauncherError as exc:
                    log.warning("submitting job %s again: %s", job_id, exc)
                resend_at = time.monotonic() + self.resubmit_queued_after
                continue
            chunk = WAIT_CHUNK_SECONDS if deadline is None else deadline - now
            if handle.job["state"] == "queued":
                chunk = min(chunk, resend_at - now)
            handle.wait_once(max(0.05, min(chunk, WAIT_CHUNK_SECONDS)), until="running")
            if handle.job.get("state") in ("queued", "starting") and handle.job.get("detail") != reported:
                reported = handle.job.get("detail")  # why it is still waiting, e.g. the engine unreachable
                log.info("job %s is %s: %s", job_id, handle.job["state"], reported)
        log.info("job %s is %s after %.3fs", job_id, handle.job["state"], time.monotonic() - started)
        return handle

    def _check_token_outside(self, job_args: dict) -> None:
        workspace = job_args.get("workspace")
        if self.token_file and isinstance(workspace, (list, tuple)) and len(workspace) == 2 and workspace[1]:
            try:
                check_token_file(self.token_file, [str(workspace[1])])
            except ConfigurationError as exc:
                raise LauncherError(f"not launching: {exc}") from None


def _no_token() -> str:
    return ""


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
