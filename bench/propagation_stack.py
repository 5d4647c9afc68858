"""The stacks the propagation benches run against, and a logged-in websocket client that notes when
each job's terminal update arrives.

embedded (the default): one `manage.py serve` with the watcher, worker and beat inside, SQLite and
the in-process channel layer, in a throwaway directory.
production: PostgreSQL + Redis, `manage.py serve --workers 2` (no watcher inside), a Celery worker
and `manage.py watch`, each its own process, as in compose.yaml. The database is a throwaway one,
bench_prop_<random>, on BENCH_PG (dropped at the end); Redis is BENCH_PROP_REDIS, a db number of
its own (default redis://127.0.0.1:6391/12, flushed before and after)."""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
FIXTURES = ROOT / "tests" / "fixtures"

from bench.harness import PG, free_port  # noqa: E402

IMAGE = "launcher-test/fake-python:1"
PROP_REDIS = os.environ.get("BENCH_PROP_REDIS", "redis://127.0.0.1:6391/12")


async def listen(url: str, origin: str, cookie: str, got: dict[int, float], ready: asyncio.Event):
    """A browser on the site's jobs page: note when each job's terminal update arrives."""
    from websockets.asyncio.client import connect

    async with connect(url, origin=origin, additional_headers={"Cookie": cookie}, ping_interval=None,
                       max_queue=None) as ws:
        ready.set()
        while True:
            message = json.loads(await ws.recv())
            now = time.time()
            for update in message["updates"] if message["type"] == "job.updates" else [message]:
                if update["type"] == "job.update" and update["job"]["state"] in ("succeeded", "failed"):
                    got.setdefault(update["job"]["id"], now)


def embedded_env(tmp: Path, **extra: str) -> dict[str, str]:
    """This process's settings: the embedded default in `tmp` (also the server's environment)."""
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG", "LAUNCHER_RUN_WATCHERS")}
    env.update(LAUNCHER_VAR_DIR=str(tmp / "var"), SECRET_KEY=secrets.token_urlsafe(40),
               DJANGO_SETTINGS_MODULE="launcher_site.settings", LAUNCHER_LOG_LEVEL="WARNING",
               LAUNCHER_LOG_FOLLOWERS="0", PORT=str(free_port()), **extra)
    os.environ.clear()
    os.environ.update(env)
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    return env


def login_cookie() -> str:
    from django.contrib.auth import get_user_model
    from django.test import Client

    get_user_model().objects.create_user("bench", password="bench-pw-123", is_staff=True)
    client = Client()
    client.login(username="bench", password="bench-pw-123")
    return f"sessionid={client.cookies['sessionid'].value}"


def serve_start(env: dict[str, str], log: Path | None = None) -> tuple[subprocess.Popen, str]:
    out = open(log, "wb") if log else subprocess.DEVNULL  # noqa: SIM115 - the child keeps its own copy
    server = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=ROOT, env=env, start_new_session=True,
                              stdout=out, stderr=subprocess.STDOUT)
    if log:
        out.close()
    _wait_port(int(env["PORT"]))
    return server, f"http://127.0.0.1:{env['PORT']}"


def serve_stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)


def production_env(tmp: Path) -> dict[str, str]:
    """This process's settings for the production layout: a new throwaway database, Redis flushed."""
    db = f"bench_prop_{secrets.token_hex(4)}"
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"CREATE DATABASE {db}"], check=True, capture_output=True)
    subprocess.run(["redis-cli", "-u", PROP_REDIS, "FLUSHDB"], check=True, capture_output=True)
    return embedded_env(tmp, DATABASE_URL=f"{PG}/{db}", REDIS_URL=PROP_REDIS, LAUNCHER_RUN_WATCHERS="false")


def production_start(env: dict[str, str], logs: Path) -> tuple[list[subprocess.Popen], str, int]:
    """serve --workers 2, a Celery worker and `manage.py watch`: (processes, base URL, the watcher's pid)."""
    commands = {"serve": ["manage.py", "serve", "--workers", "2"],
                "worker": ["-m", "celery", "-A", "launcher_site", "worker", "--concurrency", "2", "--loglevel", "WARNING"],
                "watch": ["manage.py", "watch"]}
    procs = []
    for name, args in commands.items():
        with open(logs / f"{name}.log", "wb") as out:  # the child keeps its own copy
            procs.append(subprocess.Popen([sys.executable, *args], cwd=ROOT, env=env, start_new_session=True,
                                          stdout=out, stderr=subprocess.STDOUT))
    _wait_port(int(env["PORT"]))
    return procs, f"http://127.0.0.1:{env['PORT']}", procs[2].pid


def production_stop(procs: list[subprocess.Popen], env: dict[str, str]) -> None:
    for proc in procs:
        serve_stop(proc)
    db = env["DATABASE_URL"].rsplit("/", 1)[1]
    from django.db import connections

    connections.close_all()
    subprocess.run(["psql", f"{PG}/postgres", "-qc", f"DROP DATABASE IF EXISTS {db} WITH (FORCE)"], capture_output=True)
    subprocess.run(["redis-cli", "-u", env["REDIS_URL"], "FLUSHDB"], capture_output=True)


def wait_watcher(site, timeout: float = 60) -> None:
    """Until the site's watcher has connected its change stream (its own process in production)."""
    from jobs.models import SiteHealth

    deadline = time.monotonic() + timeout
    while not SiteHealth.objects.filter(site=site, watcher_connected_at__isnull=False).exists():
        if time.monotonic() > deadline:
            raise SystemExit(f"the watcher of {site.name} did not connect within {timeout:.0f} s")
        time.sleep(0.2)


def _wait_port(port: int) -> None:
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
