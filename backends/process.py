"""Process backend: the NVFlare job command as a local subprocess (no Docker, no cluster).

Each job runs under `process_runner.py` in its own session, with cwd = `<workspace>/<job_id>` and
the credentials only in its environment. The runner keeps a small JSON state file and a log file in
`<workspace>/.launcher/`, so jobs survive a dashboard restart and their exit code is never lost.
The change stream watches those state files (local disk reads, no engine to ask).

Job code is the only thing a submitter controls, so the command is NVFlare's and nothing else:
`exe_module` must be the role's NVFlare job module (or one staff added to `process.allowed_modules`),
the flags are NVFlare's (backends.nvflare), and the job runs as the site's unprivileged
`process.user` (default: the workspace owner; root only with `process.allow_root`) with a fixed PATH.
"""

from __future__ import annotations

import json
import os
import pwd
import signal
import stat
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Any

from backends import nvflare
from backends.base import (
    Backend,
    BackendError,
    CheckResult,
    DatasetSpec,
    Handle,
    InvalidJobSpec,
    JobRequest,
    JobState,
    LaunchSpec,
    Observation,
    StillRunning,
    labels_for,
    state_for_return_code,
    terminated_outcome,
)
from backends.common import return_code_for_exit, under_allowed_roots, workload_name, workspace_child
from backends.logtail import read_file_tail
from backends.process_config import ProcessSiteConfig, check_env
from backends.process_runner import write_state

RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "process_runner.py")
STATE_DIR = ".launcher"
STREAM_INTERVAL = 0.05  # seconds between state-dir scans; local stat() calls only
# The only launcher_spec key a process job may set, and only when the site trusts job code (BYOC).
JOB_KEYS = ("python_path",)
# Seconds after which a launch lock without a runner, whose launcher process is gone, is abandoned.
ABANDONED_AFTER = 2.0
# A job's PATH: never the dashboard's (the python's own bin directory is put first).
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"


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
        args = nvflare.normalise_job_args(request.job_args, request.role)
        self.config.check_module(args["exe_module"][1], request.role)
        set_options = nvflare.check_set_options(request.set_options)
        uid, gid = self.config.job_user()
        job_dir = workspace_child(self.config.workspace, request.job_id)
        study = request.study
        datasets = study.datasets if study else ()
        env = dict(self.config.default_job_env)
        for key in ("secret_env", "secret_mounts"):  # never dropped silently: the job would run without them
            if study and getattr(study, key):
                raise InvalidJobSpec(f"study.{study.name}.{key}", "is supported on Docker and Kubernetes sites only")
        if study:
            check_env(study.env, f"study.{study.name}.env")
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
            name=workload_name(self.site, request.job_id),
            image=None,
            command=tuple(nvflare.job_command(request.command, python_path, request.role, args, set_options)),
            env=env,
            credentials=nvflare.credential_env(args),
            labels=labels,
            study=study.name if study else None,
            datasets=datasets,
            workdir=job_dir,
            options={"uid": uid, "gid": gid},
        )

    def launch(self, spec: LaunchSpec) -> Handle:
        import subprocess

        self._ensure_state_dir()
        state_path = self._state_path(spec.name)
        handle = Handle(self.kind, spec.name)
        try:
            # O_EXCL makes the state file the launch lock: a second launch of the same job adopts.
            fd = os.open(state_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            # Another launch holds the lock: let its runner record a pid, or the lock age into
            # abandoned (its launcher killed before starting the runner), before deciding to adopt.
            _wait_for(lambda: self._runner_known(spec.name) or self._abandoned(spec.name), timeout=ABANDONED_AFTER + 1)
            if not self._abandoned(spec.name):
                return handle
            os.unlink(state_path)  # its launcher died before starting the runner: launch for real
            return self.launch(spec)
        with os.fdopen(fd, "w") as f:
            json.dump({"labels": dict(spec.labels), "created_at": time.time(), "launcher_pid": os.getpid()}, f)
        try:
            uid, gid = int(spec.options["uid"]), int(spec.options["gid"])
            self._make_job_dir(spec.workdir, uid, gid)
            python_dir = os.path.dirname(spec.command[0])
            env = {
                **spec.env,
                # Fixed, never the dashboard's: the job finds only the system's and its python's tools.
                "PATH": f"{python_dir}:{SAFE_PATH}" if os.path.isabs(python_dir) else SAFE_PATH,
                "USER": _user_name(uid),
                "HOME": spec.workdir,
                **spec.credentials,
            }
            if any("\0" in key or "\0" in value for key, value in env.items()):
                raise ValueError("embedded null byte in the job environment")
            # The runner keeps our user, so it must not run with the job's environment (PYTHONPATH,
            # LD_PRELOAD...): isolated python, no site-packages (.pth files run code; the runner needs only
            # the standard library, and starts a few ms sooner), a bare env, the job's env over a pipe.
            runner = subprocess.Popen(
                [sys.executable, "-I", "-S", RUNNER, "--user", f"{uid}:{gid}", state_path, self._log_path(spec.name),
                 "--", *spec.command],
                cwd=spec.workdir, env={"PATH": SAFE_PATH}, start_new_session=True,
                stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )
            with runner.stdin:  # type: ignore[union-attr]
                runner.stdin.write(json.dumps(env).encode())  # type: ignore[union-attr]
        except (OSError, ValueError, KeyError) as exc:
            os.unlink(state_path)  # nothing half-created: the next launch may try again
            raise BackendError(f"cannot start the job process: {exc}") from exc
        return handle

    def _ensure_state_dir(self) -> None:
        """`.launcher/` is the dashboard's alone (0700, its owner): job code may own the workspace, so
        a state dir it replaced (or a symlink) is refused rather than trusted."""
        os.makedirs(self.state_dir, mode=0o700, exist_ok=True)
        if not self._state_dir_trusted():
            raise BackendError(f"{self.state_dir} must be a directory owned by uid {os.geteuid()}, not a symlink")
        if stat.S_IMODE(os.lstat(self.state_dir).st_mode) & 0o077:
            os.chmod(self.state_dir, 0o700)

    def _state_dir_trusted(self) -> bool:
        try:
            st = os.lstat(self.state_dir)
        except OSError:
            return False
        return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()

    @staticmethod
    def _make_job_dir(path: str, uid: int, gid: int) -> None:
        """Create `<workspace>/<job_id>` for the job user; never follow a symlink planted in its place."""
        os.makedirs(path, exist_ok=True)
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (uid, gid) and os.geteuid() == 0:
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)

    def _abandoned(self, ref: str) -> bool:
        """A launch lock whose launcher died (a killed worker) before the runner recorded its pid.
        The age check leaves a runner that is alive but slow to write its pid alone."""
        state = self._read_state(ref) or {}
        return (not state.get("pid") and state.get("exit_code") is None
                and time.time() - state.get("created_at", time.time()) > ABANDONED_AFTER
                and not _alive(state.get("launcher_pid")))

    def _runner_known(self, ref: str) -> bool:
        state = self._read_state(ref) or {}
        return bool(state.get("pid")) or state.get("exit_code") is not None

    def inspect(self, handle: Handle, *, terminate_requested: bool = False) -> Observation:
        observation = self._observe(handle.ref, self._read_state(handle.ref))
        return terminated_outcome(observation) if terminate_requested else observation

    def list_managed(self) -> list[Observation]:
        if not self._state_dir_trusted():
            return []
        try:
            names = sorted(os.listdir(self.state_dir))
        except FileNotFoundError:
            return []
        refs = [n[: -len(".json")] for n in names if n.endswith(".json")]
        return [self._observe(ref, self._read_state(ref)) for ref in refs]

    def terminate(self, handle: Handle) -> Observation:
        """Kill the job's process group and wait for its runner to record the exit (or record 137
        when the runner is gone). Reported through terminated_outcome(): a missing record is ABORTED."""
        state = self._read_state(handle.ref)
        if state is not None and state.get("exit_code") is None:
            # A job still being spawned has no pid yet: give the runner a moment to record it.
            _wait_for(lambda: (self._read_state(handle.ref) or {}).get("pid") is not None, timeout=5)
            pid = (self._read_state(handle.ref) or {}).get("pid")
            if pid:
                try:
                    os.killpg(pid, signal.SIGKILL)  # the job's own process group: it and its children
                except (ProcessLookupError, PermissionError):
                    pass
            recorded = _wait_for(lambda: (self._read_state(handle.ref) or {}).get("exit_code") is not None,
                                 timeout=5)
            if not recorded:  # the runner itself is gone; record the kill ourselves
                write_state(self._state_path(handle.ref), exit_code=137, finished_at=time.time())
        return self.inspect(handle, terminate_requested=True)

    def logs(self, handle: Handle, *, tail: int = 200) -> str:
        return read_file_tail(self._log_path(handle.ref), tail, final_newline=False)  # byte-capped

    def usage(self, handle: Handle) -> dict[str, Any] | None:
        """Cumulative CPU seconds and resident memory of the job's process group (the job and its
        children: the runner starts it in its own session); None when it is not running."""
        from backends.process_stats import process_group_usage

        pid = (self._read_state(handle.ref) or {}).get("pid")
        return process_group_usage(int(pid)) if pid else None

    def cleanup(self, handle: Handle) -> None:
        """Remove the record and log of an ended job; StillRunning while it runs (or starts)."""
        if not self.inspect(handle).state.is_terminal:
            raise StillRunning(f"process {handle.ref} has not finished; terminate it before cleanup")
        for path in (self._state_path(handle.ref), self._log_path(handle.ref)):
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass

    def stream(self, stop: threading.Event, *, since: int | None = None) -> Iterator[Observation]:
        """Scans the state files every STREAM_INTERVAL and reports each one that changed. The first
        scan reports every job whose record changed at or after `since` (all of them when None)."""
        seen: dict[str, float] = {}
        floor = since * 1_000_000_000 if since is not None else None
        while not stop.is_set():
            try:
                entries = list(os.scandir(self.state_dir)) if self._state_dir_trusted() else []
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
                    if floor is None or mtime >= floor:
                        yield self._observe(ref, self._read_state(ref))
            for ref in set(seen) - current:
                del seen[ref]
            floor = None  # later changes are reported whenever they happen
            stop.wait(STREAM_INTERVAL)

    def check_connection(self, datasets: Iterable[DatasetSpec] = ()) -> list[CheckResult]:
        ws = self.config.workspace
        checks = [
            CheckResult(name="workspace", ok=bool(ws) and os.path.isdir(ws) and os.access(ws, os.W_OK),
                        detail=f"{ws or '(not set)'} must be an existing, writable directory"),
            CheckResult(name="python", ok=os.access(self.config.default_python_path, os.X_OK),
                        detail=f"{self.config.default_python_path} must be executable"),
        ]
        try:
            uid, gid = self.config.job_user()
            blocked = _not_traversable(ws, uid, gid)
            checks.append(CheckResult(name="job user", ok=not blocked, detail=f"jobs run as {uid}:{gid}" + (
                f", who cannot enter {blocked} (on the way to their job directories)" if blocked else "")))
        except InvalidJobSpec as exc:
            checks.append(CheckResult(name="job user", ok=False, detail=f"{exc.field}: {exc.reason}"))
        for ds in datasets:  # a process job finds each dataset by path (no mounts): it must be there
            name = f"dataset {ds.study}/{ds.name}"
            try:
                path = under_allowed_roots(ds.source, self.allowed_data_roots, name)
                checks.append(CheckResult(name=name, ok=os.path.exists(path), detail=f"{path} " + (
                    "present" if os.path.exists(path) else "does not exist")))
            except InvalidJobSpec as exc:
                checks.append(CheckResult(name=name, ok=False, detail=exc.reason))
        return checks

    # -- internals --------------------------------------------------------------------------

    def _read_state(self, ref: str) -> dict[str, Any] | None:
        if not self._state_dir_trusted():
            return None
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
            code = return_code_for_exit(exit_code)
            return Observation(
                ref=ref, job_pk=job_pk, state=state_for_return_code(code), exit_code=exit_code,
                return_code=code, reason=state.get("reason", ""),
                message=state.get("message") or f"process exited with code {exit_code}",
                at=state.get("finished_at"), logs_tail=self.logs(Handle(self.kind, ref)),
            )
        if state.get("pid"):
            if not _alive(state.get("runner_pid")):
                return Observation(ref=ref, job_pk=job_pk, state=JobState.LOST, reason="vanished",
                                   message="the job's runner died without recording an exit code")
            return Observation(ref=ref, job_pk=job_pk, state=JobState.RUNNING, at=state.get("started_at"),
                               message=f"process {state['pid']} running")
        return Observation(ref=ref, job_pk=job_pk, state=JobState.STARTING, at=state.get("created_at"),
                           message="process record created; the runner is starting the job")


def _not_traversable(path: str, uid: int, gid: int) -> str | None:
    """The first directory from / down to `path` that uid:gid may not enter, if any."""
    if uid == 0:
        return None
    parts = os.path.abspath(path).split(os.sep)
    for i in range(1, len(parts) + 1):
        current = os.sep.join(parts[:i]) or os.sep
        try:
            st = os.stat(current)
        except OSError:
            return None  # created at launch, by us
        bit = 0o100 if st.st_uid == uid else 0o010 if st.st_gid == gid else 0o001
        if not st.st_mode & bit:
            return current
    return None


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return "nvflare"


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

