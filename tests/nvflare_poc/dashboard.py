"""FLARE Launcher as `make run` runs it (`manage.py serve`, embedded worker and watchers) on the test
database, on one fixed loopback port so that it can be stopped (Ctrl-C or kill -9) and started again
where the FL parents expect it. Its own process group: a kill takes nothing else with it (process
jobs run in their own sessions and outlive it, as they must)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import requests

from tests.api.live import ROOT, database_url
from tests.util import wait_until


class Dashboard:
    def __init__(self, var_dir: Path, port: int):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.var_dir = var_dir
        var_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = var_dir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBUG", "LAUNCHER_REQUIRE_SERVICES")}
        env.update(DJANGO_SETTINGS_MODULE="launcher_site.settings", DATABASE_URL=database_url(),
                   SECRET_KEY="nvflare-poc-test-key", LAUNCHER_VAR_DIR=str(self.var_dir), PORT=str(self.port),
                   LAUNCHER_LOG_LEVEL="INFO")
        log = open(self.log_path, "a")
        log.write(f"\n===== start {self.starts + 1} =====\n")
        log.flush()
        self.proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(self.port)], cwd=ROOT,
                                     env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        self.starts += 1
        wait_until(self._up, timeout=60, interval=0.2, message="FLARE Launcher to answer /healthz")

    def _up(self) -> bool:
        assert self.proc is not None and self.proc.poll() is None, self.output()
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def output(self, chars: int = 6000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C, as an operator stops `make run`; returns its exit status."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"FLARE Launcher did not stop within {timeout} s of Ctrl-C:\n{self.output()}") from None

    def kill(self) -> None:
        """kill -9 of its whole process group."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.interrupt()
            except AssertionError:
                pass
        self.kill()
