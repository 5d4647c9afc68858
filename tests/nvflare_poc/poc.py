"""A real NVFlare 2.9 POC federation (server, site-1, site-2) whose three FL parents launch every job
through FLARE Launcher, driven with NVFlare's own CLI. Traffic stays on 127.0.0.0/8.

Each parent loads `flare_launcher_client.FlareLauncherJobLauncher` from `local/flare_launcher__p_resources.json`
(NVFlare reads `*__p_resources.json` in the parent only; `local/resources.json` is read by job
processes too) and NVFlare's default process launcher is removed from `local/resources.json`, so
`get_job_launcher` finds exactly one launcher per site. The site token reaches the parent through its
environment (FLARE_LAUNCHER_TOKEN); the launcher component only names the variable when the client
supports that (older clients take the literal `token`).

site-1's parent runs with its workspace at DOCKER_WORKSPACE (/var/tmp/nvflare/workspace, a symlink to
its POC directory), the path NVFlare's job containers see: the paths in its job command (`-m`, `-w`)
are then the same on the host and in a Docker job container, so site-1 can use either backend.
"""

from __future__ import annotations

import inspect
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

from tests.api.live import free_port
from tests.util import wait_until

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
NVFLARE = str(VENV_BIN / "nvflare")
JOBS = ROOT / "tests" / "fixtures" / "nvflare_jobs"
SITES = ("server", "site-1", "site-2")
DOCKER_WORKSPACE = Path("/var/tmp/nvflare/workspace")
OWNER_FILE = DOCKER_WORKSPACE.with_name("workspace.test-owner")  # pid of the test run that made the link
TOKEN_ENV = "FLARE_LAUNCHER_TOKEN"
PROCESS_LAUNCHERS = ("ClientProcessJobLauncher", "ServerProcessJobLauncher")
TERMINAL = ("FINISHED:", "FAILED")

PROJECT = """api_version: 3
name: poc_project
description: FLARE Launcher end-to-end POC
participants:
  - name: server
    type: server
    org: nvidia
    fed_learn_port: {fl_port}
    admin_port: {admin_port}
  - name: site-1
    type: client
    org: nvidia
  - name: site-2
    type: client
    org: nvidia
  - name: admin@nvidia.com
    type: admin
    org: nvidia
    role: project_admin
builders:
  - path: nvflare.lighter.impl.workspace.WorkspaceBuilder
  - path: nvflare.lighter.impl.static_file.StaticFileBuilder
    args:
      config_folder: config
      scheme: tcp
  - path: nvflare.lighter.impl.cert.CertBuilder
  - path: nvflare.lighter.impl.signature.SignatureBuilder
"""


def launcher_component(url: str, site: str, token: str) -> dict:
    """The parent's launcher component: the token by environment when the client supports it."""
    from flare_launcher_client import FlareLauncherJobLauncher

    params = inspect.signature(FlareLauncherJobLauncher).parameters
    args = {"url": url, "site": site, "timeout": 60}
    if "token_env" in params:
        args["token_env"] = TOKEN_ENV
    elif "token" in params and params["token"].default is inspect.Parameter.empty:
        args["token"] = token  # an older client: a literal (the "any job can read it")
    return {"id": "flare_launcher", "path": "flare_launcher_client.FlareLauncherJobLauncher", "args": args}


class Poc:
    def __init__(self, base: Path):
        self.base = base
        self.home = base / "home"
        self.home.mkdir(parents=True)
        self.workspace = base / "poc"
        self.fl_port, self.admin_port = free_port(), free_port()
        self.parents: dict[str, subprocess.Popen] = {}
        self.tokens: dict[str, str] = {}
        self.url = ""

    # -- setup ---------------------------------------------------------------------------

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO", "DATABASE", "LAUNCHER", "REDIS"))}
        env.update(HOME=str(self.home), PATH=f"{VENV_BIN}:{env.get('PATH', '/usr/bin:/bin')}", **extra)
        return env

    def cli(self, *args: str, timeout: float = 60, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([NVFLARE, *args], env=self.env(), cwd=self.base, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"nvflare {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        return result

    def prepare(self) -> None:
        self.cli("config", "-pw", str(self.workspace))
        (self.base / "project.yml").write_text(PROJECT.format(fl_port=self.fl_port, admin_port=self.admin_port))
        self.cli("poc", "prepare", "-i", str(self.base / "project.yml"), "--force")
        self.kit = self.workspace / "poc_project" / "prod_00"
        assert (self.kit / "site-1" / "startup" / "fed_client.json").is_file(), os.listdir(self.kit)

    def site_dir(self, site: str) -> Path:
        """Where the parent runs: site-1 through DOCKER_WORKSPACE (see the module doc)."""
        return DOCKER_WORKSPACE if site == "site-1" else self.kit / site

    def real_dir(self, site: str) -> Path:
        return self.kit / site

    def link_docker_workspace(self) -> None:
        """DOCKER_WORKSPACE -> site-1's POC dir. The link of a live test run is refused; one left by a
        run that is gone (its pid in OWNER_FILE no longer alive) is replaced."""
        DOCKER_WORKSPACE.parent.mkdir(parents=True, exist_ok=True)
        if DOCKER_WORKSPACE.is_symlink():
            owner = OWNER_FILE.read_text().strip() if OWNER_FILE.exists() else ""
            if owner.isdigit() and Path(f"/proc/{owner}").exists():
                raise AssertionError(f"{DOCKER_WORKSPACE} is in use by the POC test run of process {owner}")
            DOCKER_WORKSPACE.unlink()
        elif DOCKER_WORKSPACE.exists():
            raise AssertionError(f"{DOCKER_WORKSPACE} exists and is not a POC test run's link: not touching it")
        OWNER_FILE.write_text(f"{os.getpid()}\n")
        DOCKER_WORKSPACE.symlink_to(self.real_dir("site-1"))

    def unlink_docker_workspace(self) -> None:
        if DOCKER_WORKSPACE.is_symlink() and os.readlink(DOCKER_WORKSPACE) == str(self.real_dir("site-1")):
            DOCKER_WORKSPACE.unlink()
            OWNER_FILE.unlink(missing_ok=True)

    def use_flare_launcher(self, url: str, tokens: dict[str, str]) -> None:
        """Before `start`: exactly one launcher per parent, FLARE Launcher's, loaded in the parent only."""
        self.url, self.tokens = url, tokens
        for site in SITES:
            local = self.real_dir(site) / "local"
            source = local / "resources.json" if (local / "resources.json").exists() else local / "resources.json.default"
            resources = json.loads(source.read_text())
            kept = [c for c in resources["components"] if not c["path"].endswith(PROCESS_LAUNCHERS)]
            assert len(kept) == len(resources["components"]) - 1, f"{site}: no default process launcher in {source}"
            resources["components"] = kept
            (local / "resources.json").write_text(json.dumps(resources, indent=2))
            parent_only = local / "flare_launcher__p_resources.json"
            parent_only.write_text(json.dumps({"format_version": 2, "components": [
                launcher_component(url, site, tokens[site])]}, indent=2))
            parent_only.chmod(0o600)

    # -- parents -------------------------------------------------------------------------

    def start(self) -> None:
        """All three parents at once, each with its own token in its environment."""
        for site in SITES:
            self.start_parent(site)
        wait_until(lambda: self._log_has("server", "Server started"), timeout=60, interval=0.2,
                   message="the FL server to start")
        for site in SITES[1:]:
            wait_until(lambda s=site: self._log_has(s, "Successfully registered client"), timeout=60,
                       interval=0.2, message=f"{site} to register with the server")

    def start_parent(self, site: str) -> None:
        directory = self.site_dir(site)
        console = open(self.real_dir(site) / "poc_console.log", "a")
        env = self.env(PYTHONPATH=str(ROOT), **{TOKEN_ENV: self.tokens[site]})
        # The kit's own start script; --once: without its restart loop (which waits 5 s before starting).
        self.parents[site] = subprocess.Popen(["bash", str(directory / "startup" / "sub_start.sh"), "--once"],
                                              cwd=directory,
                                              env=env, stdout=console, stderr=subprocess.STDOUT, start_new_session=True)

    def _log_has(self, site: str, text: str) -> bool:
        log = self.real_dir(site) / "log.txt"
        return log.exists() and text in log.read_text(errors="replace")

    def log(self, site: str) -> str:
        log = self.real_dir(site) / "log.txt"
        return log.read_text(errors="replace") if log.exists() else ""

    def stop(self) -> None:
        """Kill each parent's process group, then any job process FLARE Launcher started that is still
        there (each runs in its own session). Nothing is kept: the workspace is thrown away, so
        `nvflare poc stop` (a graceful shutdown over the admin port, ~25 s) buys nothing here."""
        for proc in self.parents.values():
            _kill_group(proc.pid)
            proc.wait(timeout=10)
        self.parents.clear()
        for site in SITES:
            for state in (self.real_dir(site) / ".launcher").glob("*.json"):
                try:
                    pids = json.loads(state.read_text())
                except (OSError, ValueError):
                    continue
                for key in ("pid", "runner_pid"):
                    if isinstance(pids.get(key), int) and pids.get("exit_code") is None:
                        _kill_group(pids[key])

    # -- jobs ----------------------------------------------------------------------------

    def json_cli(self, *args: str, timeout: float = 60) -> dict:
        result = self.cli("--format", "json", *args, timeout=timeout, check=False)
        try:
            envelope = json.loads(result.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise AssertionError(f"nvflare {' '.join(args)}: no JSON answer:\n{result.stdout}\n{result.stderr}") from None
        assert envelope.get("status") == "ok", envelope
        return envelope.get("data") or {}

    def submit(self, folder: Path) -> str:
        return self.json_cli("job", "submit", "-j", str(folder))["job_id"]

    def meta(self, job_id: str) -> dict:
        return self.json_cli("job", "meta", job_id)

    def status(self, job_id: str) -> str:
        return self.meta(job_id).get("status", "")

    def abort(self, job_id: str) -> None:
        self.json_cli("job", "abort", job_id, "--force")

    def wait_status(self, job_id: str, predicate, *, timeout: float, message: str) -> str:
        return wait_until(lambda: (lambda s: s if predicate(s) else None)(self.status(job_id)), timeout=timeout,
                          interval=0.5, message=f"NVFlare job {job_id} {message}")

    def wait_finished(self, job_id: str, timeout: float = 90) -> str:
        return self.wait_status(job_id, lambda s: s.startswith(TERMINAL), timeout=timeout, message="to finish")

    def abort_unfinished(self, *job_ids: str) -> None:
        """Cleanup after a failed scenario, so the next one gets a free federation."""
        for job_id in job_ids:
            try:
                if not self.status(job_id).startswith(TERMINAL):
                    self.abort(job_id)
                    self.wait_finished(job_id, timeout=60)
            except AssertionError:
                pass


def numpy_job(dest: Path, *, name: str, rounds: int = 3, sleep_time: float = 0) -> Path:
    """hello-numpy-sag with `rounds` rounds and each client's training taking `sleep_time` seconds."""
    folder = dest / name
    shutil.copytree(JOBS / "hello-numpy-sag", folder)
    meta = json.loads((folder / "meta.json").read_text())
    meta["name"] = name
    (folder / "meta.json").write_text(json.dumps(meta, indent=2))
    server = folder / "app" / "config" / "config_fed_server.json"
    config = json.loads(server.read_text())
    config["workflows"][0]["args"]["num_rounds"] = rounds
    server.write_text(json.dumps(config, indent=2))
    client = folder / "app" / "config" / "config_fed_client.json"
    config = json.loads(client.read_text())
    config["executors"][0]["executor"]["args"]["sleep_time"] = sleep_time
    client.write_text(json.dumps(config, indent=2))
    return folder


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
