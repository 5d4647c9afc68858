"""Process backend: the NVFlare job command as a local subprocess (no Docker, no cluster).

Each job runs under `process_runner.py` in its own session, with cwd = `<workspace>/<job_id>` and
the credentials only in its environment. The runner keeps a small JSON state file and a log file in
`<workspace>/.launcher/`, so jobs survive a dashboard restart and their exit code is never lost.
The change stream watches those state files (local disk reads, no engine to ask).
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from backends import nvflare
from backends.base import (
    Backend,
    BackendError,
    CheckResult,
    Handle,
    InvalidJobSpec,
    JobRequest,
    JobState,
    LaunchSpec,
    Observation,
    ReturnCode,
    labels_for,
    state_for_return_code,
)
from backends.paths import under_allowed_roots, workspace_child
from backends.process_runner import write_state

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "process_runner.py")
STATE_DIR = ".launcher"
STREAM_INTERVAL = 0.05  # seconds between state-dir scans; local stat() calls only
# The only launcher_spec key a process job may set, and only when the site trusts job code (BYOC).
JOB_KEYS = ("python_path",)
# Seconds after which a launch lock without a runner, whose launcher process is gone, is abandoned.
ABANDONED_AFTER = 2.0


@dataclass(frozen=True, kw_only=True)
class ProcessSiteConfig:
    workspace: str = ""  # host directory holding startup/, local/ and one directory per job
    default_python_path: str = sys.executable
    default_job_env: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ProcessSiteConfig:
        data = dict(data or {})
        unknown = set(data) - {"workspace", "default_python_path", "default_job_env"}
        if unknown:
            raise InvalidJobSpec(f"process.{sorted(unknown)[0]}", "unknown setting")
        workspace = data.get("workspace", "")
        if not isinstance(workspace, str) or (workspace and not os.path.isabs(workspace)):
            raise InvalidJobSpec("process.workspace", "must be an absolute directory path")
        python_path = nvflare.check_python_path(
            data.get("default_python_path") or sys.executable, "process.default_python_path"
        )
        env = data.get("default_job_env") or {}
        if not isinstance(env, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()):
            raise InvalidJobSpec("process.default_job_env", "must be a mapping of NAME -> string value")
        return cls(workspace=workspace, default_python_path=python_path, default_job_env=dict(env))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def process_name(site: str, job_id: str) -> str:
    name = re.sub(r"[^a-z0-9_.-]", "-", f"{site}-{job_id}".lower()).strip("-")
    return name or "nvflare-job"


class ProcessBackend(Backend):
    kind = "process"

    def __init__(self, *, site: str, config: ProcessSiteConfig, allowed_data_roots: tuple[str, ...] = ()):
        self.site = site
        self.config = config
        self.allowed_data_roots = allowed_data_roots

    # -- paths ------------------------------------------------------------------------------

    @property
    def state_dir(self) -> str:
        return os.path.join(self.config.workspace, STATE_DIR)

    def _state_path(self, ref: str) -> str:
        return os.path.join(self.state_dir, f"{ref}.json")

    def _log_path(self, ref: str) -> str:
        return os.path.join(self.state_dir, f"{ref}.log")

    # -- interface --------------------------------------------------------------------------

    def prepare(self, request: JobRequest) -> LaunchSpec:
        if not self.config.workspace:
            raise InvalidJobSpec("process.workspace", "the site has no workspace directory configured")
        nvflare.check_job_id(request.job_id)
        options = nvflare.resolve_launcher_spec(request.job_meta, request.site, "process")
        for key in options:
            if key not in JOB_KEYS:
                raise InvalidJobSpec(
                    f"job_meta.launcher_spec.{request.site}.process.{key}",
                    f"unsupported job-controlled process option {key!r}; allowed: {', '.join(JOB_KEYS)}",
                )
        python_path = self.config.default_python_path
        if "python_path" in options:
            field_name = f"job_meta.launcher_spec.{request.site}.process.python_path"
            if not request.byoc:
                raise InvalidJobSpec(field_name, "a job may choose its python only with locally authorized BYOC")
            python_path = nvflare.check_python_path(options["python_path"], field_name)
        nvflare.portable_resources(request.job_meta, request.site)  # validated; a local process has no limits
        args = nvflare.normalise_job_args(request.job_args)
        job_dir = workspace_child(self.config.workspace, request.job_id)
        study = request.study
        datasets = study.datasets if study else ()
        env = dict(self.config.default_job_env)
        if study:
            env.update(study.env)
        for ds in datasets:
            # No mounts for a local process: the job finds each dataset through its environment.
            path = under_allowed_roots(ds.source, self.allowed_data_roots, f"study.{ds.study}.datasets.{ds.name}.source")
            env[f"NVFLARE_DATASET_{ds.study}_{ds.name}".upper().replace("-", "_")] = path
        labels = labels_for(site=self.site, job_pk=request.job_pk, job_id=request.job_id,
                            study=study.name if study else None)
        return LaunchSpec(
            backend=self.kind,
            site=self.site,
            job_pk=request.job_pk,
            job_id=request.job_id,
            role=request.role,
            name=process_name(self.site, request.job_id),
            image=None,
            command=tuple(nvflare.render_command(python_path, request.role, args, request.set_options)),
            env=env,
            credentials=nvflare.credential_env(args),
            labels=labels,
            study=study.name if study else None,
            datasets=datasets,
            workdir=job_dir,
        )

    def launch(self, spec: LaunchSpec) -> Handle:
        import subprocess

        os.makedirs(self.state_dir, exist_ok=True)
        state_path = self._state_path(spec.name)
        handle = Handle(self.kind, spec.name)
        try:
            # O_EXCL makes the state file the launch lock: a second launch of the same job adopts.
            fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            if not self._abandoned(spec.name):
                return handle
            os.unlink(state_path)  # its launcher died before starting the runner: launch for real
            return self.launch(spec)
        with os.fdopen(fd, "w") as f:
            json.dump({"labels": dict(spec.labels), "created_at": time.time(), "launcher_pid": os.getpid()}, f)
        try:
            os.makedirs(spec.workdir, exist_ok=True)
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "USER": os.environ.get("USER", "nvflare"),
                "HOME": os.environ.get("HOME", "/tmp"),
                **spec.env,
                **spec.credentials,
            }
            subprocess.Popen(
                [sys.executable, RUNNER, state_path, self._log_path(spec.name), "--", *spec.command],
                cwd=spec.workdir, env=env, start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
        except OSError as exc:
            os.unlink(state_path)  # nothing half-created: the next launch may try again
            raise BackendError(f"cannot start the job process: {exc}") from exc
        return handle

    def _abandoned(self, ref: str) -> bool:
        """A launch lock whose launcher died (a killed worker) before the runner recorded its pid.
        The age check leaves a runner that is alive but slow to write its pid alone."""
        state = self._read_state(ref) or {}
        return (not state.get("pid") and state.get("exit_code") is None
                and time.time() - state.get("created_at", time.time()) > ABANDONED_AFTER
                and not _alive(state.get("launcher_pid")))

    def inspect(self, handle: Handle) -> Observation:
        return self._observe(handle.ref, self._read_state(handle.ref))

    def list_managed(self) -> list[Observation]:
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return []
        refs = [n[: -len(".json")] for n in names if n.endswith(".json")]
        return [self._observe(ref, self._read_state(ref)) for ref in refs]

    def terminate(self, handle: Handle) -> Observation:
        state = self._read_state(handle.ref)
        if state is None:
            return Observation(ref=handle.ref, state=JobState.ABORTED, return_code=ReturnCode.ABORTED,
                               reason="vanished", message="no such process; counted as aborted")
        if state.get("exit_code") is None:
            path = self._state_path(handle.ref)
            write_state(path, terminated=True)
            # A job still being spawned has no pid yet: give the runner a moment to record it.
            _wait_for(lambda: (self._read_state(handle.ref) or {}).get("pid") is not None, timeout=5)
            pid = (self._read_state(handle.ref) or {}).get("pid")
            write_state(path, terminated=True)  # again: the runner's start-up write may have raced the first
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)  # the job's own process group: it and its children
                except (ProcessLookupError, PermissionError):
                    pass
            recorded = _wait_for(lambda: (self._read_state(handle.ref) or {}).get("exit_code") is not None,
                                 timeout=5)
            if not recorded:  # the runner itself is gone; record the kill ourselves
                write_state(path, exit_code=137, finished_at=time.time())
        return self.inspect(handle)

    def logs(self, handle: Handle, *, tail: int = 200) -> str:
        return _tail(self._log_path(handle.ref), tail)

    def cleanup(self, handle: Handle) -> None:
        for path in (self._state_path(handle.ref), self._log_path(handle.ref)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def stream(self, stop: threading.Event) -> Iterator[Observation]:
        seen: dict[str, float] = {}
        while not stop.is_set():
            try:
                entries = list(os.scandir(self.state_dir))
            except FileNotFoundError:
                entries = []
            current = set()
            for entry in entries:
                if not entry.name.endswith(".json"):
                    continue
                ref = entry.name[: -len(".json")]
                current.add(ref)
                try:
                    mtime = entry.stat().st_mtime_ns
                except FileNotFoundError:
                    continue
                if seen.get(ref) != mtime:
                    seen[ref] = mtime
                    yield self._observe(ref, self._read_state(ref))
            for ref in set(seen) - current:
                del seen[ref]
            stop.wait(STREAM_INTERVAL)

    def check_connection(self) -> list[CheckResult]:
        ws = self.config.workspace
        checks = [
            CheckResult(name="workspace", ok=bool(ws) and os.path.isdir(ws) and os.access(ws, os.W_OK),
                        detail=f"{ws or '(not set)'} must be an existing, writable directory"),
            CheckResult(name="python", ok=os.access(self.config.default_python_path, os.X_OK),
                        detail=f"{self.config.default_python_path} must be executable"),
        ]
        return checks

    # -- internals --------------------------------------------------------------------------

    def _read_state(self, ref: str) -> dict[str, Any] | None:
        try:
            with open(self._state_path(ref)) as f:
                return json.load(f)
        except FileNotFoundError:
            return None
        except ValueError:
            return {}  # being created right now

    def _observe(self, ref: str, state: dict[str, Any] | None) -> Observation:
        if state is None:
            return Observation(ref=ref, state=JobState.LOST, reason="vanished",
                               message="the job's process record is gone")
        job_pk = (state.get("labels") or {}).get("flare-launcher/job")
        exit_code = state.get("exit_code")
        if exit_code is not None:
            if state.get("terminated"):
                code = ReturnCode.ABORTED
            else:
                code = exit_code if exit_code in (ReturnCode.SUCCESS, ReturnCode.ABORTED) else ReturnCode.EXECUTION_ERROR
            return Observation(
                ref=ref, job_pk=job_pk, state=state_for_return_code(code), exit_code=exit_code,
                return_code=int(code), reason=state.get("reason", "terminated" if state.get("terminated") else ""),
                message=state.get("message") or f"process exited with code {exit_code}",
                at=state.get("finished_at"), logs_tail=_tail(self._log_path(ref), 200),
            )
        if state.get("pid"):
            if not _alive(state.get("runner_pid")):
                return Observation(ref=ref, job_pk=job_pk, state=JobState.LOST, reason="vanished",
                                   message="the job's runner died without recording an exit code")
            return Observation(ref=ref, job_pk=job_pk, state=JobState.RUNNING, at=state.get("started_at"),
                               message=f"process {state['pid']} running")
        return Observation(ref=ref, job_pk=job_pk, state=JobState.STARTING, at=state.get("created_at"))


def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"  # a zombie has finished
    except FileNotFoundError:
        return False


def _wait_for(predicate, *, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def _tail(path: str, lines: int) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 256 * 1024))
            data = f.read()
    except FileNotFoundError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:]) if lines > 0 else ""
