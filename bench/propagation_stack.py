"""The stack the propagation benches run against: the embedded default (one `manage.py serve` with
the watcher, worker and beat inside, SQLite, the in-process channel layer) in a throwaway
directory, and a logged-in websocket client that notes when each job's terminal update arrives."""

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

from bench.harness import free_port  # noqa: E402

IMAGE = "launcher-test/fake-python:1"


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
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
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
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", int(env["PORT"])), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.1)
    return server, f"http://127.0.0.1:{env['PORT']}"


def serve_stop(server: subprocess.Popen) -> None:
    if server.poll() is None:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(10)
