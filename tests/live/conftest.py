"""Fixtures for the live-state tests: logged-in websocket clients, a process site whose jobs the
tests control, and (for the multi-process tests) real server, worker and watcher processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.test import Client

from tests.util import wait_until

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def session_cookie(user) -> str:
    """A real session for `user`, as the login page would create it."""
    client = Client()
    client.force_login(user)
    return f"sessionid={client.cookies['sessionid'].value}"


def ws_headers(cookie: str | None, origin: str = "http://127.0.0.1") -> list[tuple[bytes, bytes]]:
    headers = [(b"origin", origin.encode()), (b"host", b"127.0.0.1")]
    if cookie:
        headers.append((b"cookie", cookie.encode()))
    return headers


def process_state(workspace: Path, ref: str) -> dict:
    try:
        return json.loads((workspace / ".launcher" / f"{ref}.json").read_text())
    except (FileNotFoundError, ValueError):
        return {}


def kill_job_process(workspace: Path, ref: str, sig: int = signal.SIGKILL) -> None:
    """What an operator (or the OOM killer) does to a job: kill its process group."""
    pid = wait_until(lambda: process_state(workspace, ref).get("pid"), timeout=15, message=f"{ref} to get a pid")
    os.killpg(pid, sig)


@pytest.fixture
def require_services(settings):
    """The multi-process tests need PostgreSQL (shared by processes) and the redis-server binary.
    Under `make test` (LAUNCHER_REQUIRE_SERVICES=1) a missing one is a failure, not a skip."""
    problems = []
    if settings.DATABASES["default"]["ENGINE"] != "django.db.backends.postgresql":
        problems.append("DATABASE_URL is not PostgreSQL")
    if not settings.REDIS_URL:
        problems.append("REDIS_URL is not set")
    if not any(os.access(os.path.join(d, "redis-server"), os.X_OK) for d in os.environ.get("PATH", "").split(":")):
        problems.append("redis-server is not installed")
    if problems:
        if os.environ.get("LAUNCHER_REQUIRE_SERVICES") == "1":
            pytest.fail("; ".join(problems))
        pytest.skip("; ".join(problems))


class RedisServer:
    """A throwaway redis-server on a free loopback port: the tests may stop it, and its pub/sub
    channels are not shared with anyone else's tests (pub/sub ignores the database number)."""

    def __init__(self, tmp: Path):
        self.port = free_port()
        self.dir = tmp
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", str(self.dir), "--daemonize", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        wait_until(self._answers, timeout=10, message="redis-server to answer")

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def redis_server(require_services, tmp_path):
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class Processes:
    """The launcher's own processes (serve, watch, celery worker), started against the test database
    and a given Redis, stopped (and their output shown on failure) at teardown."""

    def __init__(self, tmp: Path, settings, redis_url: str):
        db = settings.DATABASES["default"]
        self.env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
        self.env.update(
            DATABASE_URL=f"postgres://{db['USER']}:{db['PASSWORD']}@{db['HOST']}:{db['PORT']}/{db['NAME']}",
            REDIS_URL=redis_url, SECRET_KEY=settings.SECRET_KEY, DJANGO_SETTINGS_MODULE="launcher_site.settings",
            LAUNCHER_VAR_DIR=str(tmp / "var"), LAUNCHER_RUN_WATCHERS="false", LAUNCHER_WATCHER_LEASE_SECONDS="3",
            LAUNCHER_TASK_VISIBILITY_SECONDS="4", LAUNCHER_LOG_LEVEL="WARNING", PYTHONUNBUFFERED="1",
            # A push the layer drops is caught up within two heartbeats; keep that well inside the
            # tests' waits (the default of 20 s is for real browsers and proxies).
            LAUNCHER_WS_HEARTBEAT_SECONDS="4",
        )
        self.tmp = tmp
        self.procs: list[tuple[str, subprocess.Popen, Path]] = []

    def start(self, name: str, *argv: str, **env: str) -> subprocess.Popen:
        out = self.tmp / f"{name}-{len(self.procs)}.log"
        proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env={**self.env, **env}, stdout=out.open("wb"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        self.procs.append((name, proc, out))
        return proc

    def serve(self, **env: str) -> str:
        port = free_port()
        proc = self.start("serve", "manage.py", "serve", "--port", str(port), **env)
        base = f"http://127.0.0.1:{port}"
        wait_until(lambda: self._up(proc, port), timeout=30, interval=0.1, message=f"serve on {port}")
        return base

    def watch(self, **env: str) -> subprocess.Popen:
        return self.start("watch", "manage.py", "watch", **env)

    def worker(self, **env: str) -> subprocess.Popen:
        return self.start("worker", "-m", "celery", "-A", "launcher_site", "worker", "--pool", "threads",
                          "--concurrency", "2", "--without-heartbeat", "--without-gossip", "--without-mingle",
                          "-l", "warning", **env)

    def _up(self, proc, port) -> bool:
        assert proc.poll() is None, self.output(proc)
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            return False

    def kill(self, proc: subprocess.Popen, sig: int = signal.SIGKILL) -> None:
        if proc.poll() is None:
            os.killpg(proc.pid, sig)
        proc.wait(20)

    def output(self, proc) -> str:
        for _, p, out in self.procs:
            if p is proc:
                return out.read_text(errors="replace")[-4000:]
        return ""

    def shell(self, code: str, timeout: float = 60) -> str:
        done = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=self.env,
                              capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    def stop_all(self) -> str:
        report = []
        for name, proc, out in reversed(self.procs):
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)
                    proc.wait(10)
            report.append(f"--- {name} (exit {proc.returncode}) ---\n{out.read_text(errors='replace')[-3000:]}")
        return "\n".join(report)


@pytest.fixture
def processes(request, require_services, transactional_db, tmp_path, settings):
    """Factory for launcher processes bound to a Redis URL; all are stopped at teardown."""
    made: list[Processes] = []

    def make(redis_url: str) -> Processes:
        procs = Processes(tmp_path, settings, redis_url)
        made.append(procs)
        return procs

    yield make
    for procs in made:
        report = procs.stop_all()
        if getattr(request.node, "rep_call", None) is not None and request.node.rep_call.failed:
            print(report)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    setattr(item, f"rep_{call.when}", outcome.get_result())


TERMINAL = {"succeeded", "failed", "aborted", "lost", "launch_failed"}


def transitions(job_pk: int) -> list[tuple[str, str]]:
    """The job's state changes (notes left out), in order."""
    from django.db.models import F

    from jobs.models import JobEvent

    return list(JobEvent.objects.filter(job_id=job_pk).exclude(from_state=F("to_state")).order_by("id")
                .values_list("from_state", "to_state"))


def assert_clean_history(job_pk: int) -> None:
    """Forward-only, no transition twice, exactly one terminal state."""
    changes = transitions(job_pk)
    assert len(changes) == len(set(changes)), changes
    assert all(a[1] == b[0] for a, b in zip(changes, changes[1:])), changes
    assert [to for _, to in changes if to in TERMINAL] == [changes[-1][1]], changes


def docker_workspace(path: Path) -> Path:
    """An FL client workspace at `path` as a Docker site needs it: startup/fed_client.json and
    local/, owned by uid 1000, the user the job containers run as."""
    for sub in ("startup", "local"):
        (path / sub).mkdir(parents=True)
    (path / "startup" / "fed_client.json").write_text("{}")
    for item in (path, path / "startup", path / "local", path / "startup" / "fed_client.json"):
        os.chown(item, 1000, 1000)
    return path


def queued_job(site, job_id: str, *set_options: str):
    """A job as job_submit records it, without enqueueing its launch (the tests launch it
    themselves, or through their own worker). Returns (job, credentials)."""
    from jobs.models import Job, JobEvent
    from jobs.services.submission import split_credentials
    from tests.conftest import client_job_args

    stored, credentials = split_credentials(client_job_args(job_id))
    job = Job.objects.create(site=site, job_id=job_id, backend=site.backend, job_args=stored,
                             set_options=list(set_options))
    JobEvent.objects.create(job=job, from_state="", to_state="queued", source="api", message="submitted")
    return job, credentials


def job_state(job_pk: int) -> str:
    from jobs.models import Job

    return Job.objects.values_list("state", flat=True).get(pk=job_pk)


@pytest.fixture
def live_redis(redis_server, settings):
    """The throwaway Redis as this test process's channel layer too, so what the test publishes
    reaches the server processes under test and nobody else's."""
    settings.CHANNEL_LAYERS = {"default": {"BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
                                           "CONFIG": {"hosts": [{"address": redis_server.url,
                                                                 "socket_connect_timeout": 3}]}}}
    return redis_server


class Browser:
    """A websocket client that behaves like the dashboard's script: logged in with a session
    cookie, it holds every change up to `seq` (raised by snapshots and heartbeats) and, per job,
    the latest seq it got after that (`held`); it resumes with both when it reconnects."""

    def __init__(self, base: str, path: str, cookie: str):
        self.url = base.replace("http://", "ws://") + path
        self.origin = base
        self.cookie = cookie
        self.ws = None
        self.seq = 0
        self.held: dict[int, int] = {}
        self.jobs: dict[int, dict] = {}
        self.pending: list[dict] = []  # the rest of a job.updates frame, handed out one by one

    async def connect(self, *, resume: bool = False, timeout: float = 10):
        from websockets.asyncio.client import connect

        self.ws = await connect(self.url, origin=self.origin, additional_headers={"Cookie": self.cookie},
                                open_timeout=timeout, ping_interval=None)
        if resume:
            await self.ws.send(json.dumps({"type": "resume", "seq": self.seq,
                                           "jobs": {str(pk): seq for pk, seq in self.held.items()}}))
        return self

    async def reconnect(self, *, timeout: float = 30):
        """Retry until the server is back (as the dashboard's script does), then resume."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while True:
            try:
                return await self.connect(resume=True, timeout=5)
            except (OSError, Exception) as exc:  # refused, reset, handshake timeout while restarting
                if loop.time() > end:
                    raise AssertionError(f"could not reconnect to {self.url}: {exc!r}") from exc
                await asyncio.sleep(0.2)  # a client's reconnect backoff, not a wait for a condition

    async def next(self, timeout: float = 10) -> dict:
        import asyncio

        if not self.pending:
            frame = json.loads(await asyncio.wait_for(self.ws.recv(), timeout))
            # As the dashboard's script does: a batch frame is its updates, in order.
            self.pending = list(frame["updates"]) if frame["type"] == "job.updates" else [frame]
        message = self.pending.pop(0)
        if message["type"] == "job.update":
            pk = message["job"]["id"]
            if message["seq"] is not None and message["seq"] > self.seq:
                self.held[pk] = max(self.held.get(pk, 0), message["seq"])
            self.jobs[pk] = message["job"]
        elif message["type"] == "snapshot":
            self.jobs.update({job["id"]: job for job in message["jobs"] if self.held.get(job["id"], 0) <= message["seq"]})
            self._hold_up_to(message["seq"])
        elif message["type"] == "heartbeat" and "seq" in message:
            self._hold_up_to(message["seq"])
        return message

    def _hold_up_to(self, seq: int) -> None:
        if seq > self.seq:
            self.seq = seq
            self.held = {pk: held for pk, held in self.held.items() if held > seq}

    async def until(self, predicate, timeout: float = 20) -> dict:
        """Read messages until predicate(self) holds."""
        import asyncio

        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        while not predicate(self):
            left = end - loop.time()
            if left <= 0:
                raise AssertionError(f"timed out; last states seen: {self.states()}")
            try:
                await self.next(timeout=left)
            except TimeoutError:
                continue
        return self.jobs

    def states(self) -> dict[str, str]:
        # list() copies under the GIL in one step: safe while the event loop adds jobs (the scale
        # tests read this from a waiting thread).
        return {job["job_id"]: job["state"] for job in list(self.jobs.values())}

    async def close(self):
        if self.ws is not None:
            await self.ws.close()
