"""A real `manage.py serve` process on the test database (embedded worker + watchers inside), for
tests that need HTTP over a socket: the long poll under load and the NVFlare-side client.

The server shares the test database, so tests using it are transactional: rows the test creates are
committed and visible to the server, and the server is stopped before the tables are flushed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests
from django.db import connection

from tests.util import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    return f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


class LiveServer:
    def __init__(self, tmp_path: Path, env_overrides: dict[str, str] | None = None, *, port: int | None = None,
                 args: tuple[str, ...] = ()):
        self.port = port or free_port()  # a given port: a restart where the last one listened
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = tmp_path / "server.log"
        env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DEBUG", "LAUNCHER_REQUIRE_SERVICES")}
        env.update(DJANGO_SETTINGS_MODULE="launcher_site.settings", DATABASE_URL=database_url(),
                   SECRET_KEY="live-server-test-key", LAUNCHER_VAR_DIR=str(tmp_path / "server-var"),
                   PORT=str(self.port), LAUNCHER_LOG_LEVEL="WARNING")
        env.update(env_overrides or {})
        (tmp_path / "server-var").mkdir(exist_ok=True)
        self.log = open(self.log_path, "a")
        self.proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(self.port), *args], cwd=ROOT,
                                     env=env, stdout=self.log, stderr=subprocess.STDOUT)
        try:
            wait_until(self._up, timeout=60, interval=0.2, message="live server to answer /healthz")
        except BaseException:
            with contextlib.suppress(AssertionError):  # the start-up failure is the error to report
                self.stop()
            raise

    def _up(self) -> bool:
        assert self.proc.poll() is None, self.output()
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text()[-5000:]

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"server did not stop within 30 s:\n{self.output()}") from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait(timeout=10)
            self.log.close()


@pytest.fixture
def launcher_server(transactional_db, tmp_path):
    server = LiveServer(tmp_path)
    try:
        yield server
    finally:
        server.stop()
