"""Shared set-up for the benchmarks: a throwaway PostgreSQL database, the Redis that `make test`
starts, and real `manage.py serve` processes on loopback. Everything stops when the bench ends.

Environment: BENCH_PG (default postgres://launcher:launcher@127.0.0.1:5432) and BENCH_REDIS
(default redis://127.0.0.1:6391/0). Run `make services` first.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
PG = os.environ.get("BENCH_PG", "postgres://launcher:launcher@127.0.0.1:5432")
REDIS = os.environ.get("BENCH_REDIS", "redis://127.0.0.1:6391/0")
PASSWORD = "bench-password-123"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def summary(values: list[float]) -> str:
    return f"p50 {percentile(values, 50):7.1f} ms   p99 {percentile(values, 99):7.1f} ms   (n={len(values)})"


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


class Stack:
    """A fresh database plus N web processes in Redis mode."""

    def __init__(self, *, name: str, web: int = 1, extra_env: dict[str, str] | None = None):
        self.db = f"launcher_bench_{name}"
        self.env = {k: v for k, v in os.environ.items() if k not in ("DEBUG",)}
        self.env.update(
            DATABASE_URL=f"{PG}/{self.db}", REDIS_URL=REDIS, SECRET_KEY=secrets.token_urlsafe(40),
            LAUNCHER_VAR_DIR=str(ROOT / "var" / f"bench-{name}"), LAUNCHER_RUN_WATCHERS="false",
            DJANGO_SETTINGS_MODULE="launcher_site.settings", LAUNCHER_LOG_LEVEL="WARNING",
            **(extra_env or {}),
        )
        self.web_count = web
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []

    def manage(self, *args: str, input: str | None = None) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, input=input,
                             capture_output=True, text=True, timeout=600)
        if out.returncode != 0:
            raise RuntimeError(f"manage.py {' '.join(args)} failed: {out.stderr[-2000:]}")
        return out.stdout

    def shell(self, code: str) -> str:
        return self.manage("shell", "-c", code)

    def __enter__(self) -> Stack:
        subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE IF EXISTS {self.db}"], check=True,
                       capture_output=True)
        subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {self.db}"], check=True, capture_output=True)
        subprocess.run(["redis-cli", "-u", REDIS, "FLUSHDB"], check=True, capture_output=True)
        self.manage("migrate", "--noinput")
        self.shell(
            "from django.contrib.auth import get_user_model as g; "
            f"g().objects.create_superuser('bench', password='{PASSWORD}')"
        )
        logs = Path(self.env["LAUNCHER_VAR_DIR"])
        logs.mkdir(parents=True, exist_ok=True)
        for n in range(self.web_count):
            port = free_port()
            with open(logs / f"web-{n}.log", "w") as log:  # the child keeps its own copy of the fd
                proc = subprocess.Popen([sys.executable, "manage.py", "serve", "--port", str(port)], cwd=ROOT,
                                        env=self.env, stdout=log, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            self.urls.append(f"http://127.0.0.1:{port}")
        for url in self.urls:
            wait_http(f"{url}/healthz")
        return self

    def __exit__(self, *exc) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE IF EXISTS {self.db} WITH (FORCE)"],
                       capture_output=True)

    def site_token(self, site: str) -> str:
        return self.manage("api_token", "--site", site).strip()

    def login(self, url: str) -> requests.Session:
        session = requests.Session()
        session.get(f"{url}/accounts/login/", timeout=10)
        session.post(f"{url}/accounts/login/", timeout=10, headers={"Referer": f"{url}/accounts/login/"},
                     data={"username": "bench", "password": PASSWORD,
                           "csrfmiddlewaretoken": session.cookies["csrftoken"]})
        assert "sessionid" in session.cookies, "login failed"
        return session


def wait_http(url: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(requests.ConnectionError):
            if requests.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def process_stats(pids: list[int]) -> tuple[float, float]:
    """(CPU seconds, resident MiB) summed over the processes and their children."""
    cpu = rss = 0.0
    tick = os.sysconf("SC_CLK_TCK")
    for pid in _with_children(pids):
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            cpu += (int(fields[11]) + int(fields[12])) / tick
            rss += int(fields[21]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    return cpu, rss


def _with_children(pids: list[int]) -> Iterator[int]:
    for pid in pids:
        yield pid
        with contextlib.suppress(FileNotFoundError):
            for child in Path(f"/proc/{pid}/task/{pid}/children").read_text().split():
                yield from _with_children([int(child)])


@contextlib.contextmanager
def throwaway_database(prefix: str) -> Iterator[str]:
    """A fresh PostgreSQL database `<prefix>_<random>` on BENCH_PG, dropped on exit; yields its URL."""
    name = f"{prefix}_{secrets.token_hex(4)}"
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {name}"], check=True, capture_output=True)
    try:
        yield f"{PG}/{name}"
    finally:
        subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"],
                       capture_output=True)


def stop_processes(procs: list[subprocess.Popen], timeout: float = 20) -> None:
    """SIGINT each process (its own session's group when it leads one), then kill what is left."""
    import signal

    for proc in procs:
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGINT) if os.getpgid(proc.pid) == proc.pid else proc.send_signal(signal.SIGINT)
    for proc in procs:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL) if os.getpgid(proc.pid) == proc.pid else proc.kill()
            proc.wait(10)
