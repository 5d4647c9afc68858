"""The composed layout for real: compose.yaml + compose.test.yaml brought up with Debian's
docker-compose (1.29) from locally built images (tests/images/build_compose.sh; nothing pulled).

Every service runs on the host network on ports chosen free here, so all traffic stays on 127.0.0.1;
the test's own secrets, workspace and project name (unique per run) keep it apart from anything else.
The stack is taken down with its volumes (`down -v`) however the tests end."""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import tempfile
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import requests
import yaml

from tests.util import docker_client_or_skip, skip_or_fail, wait_until

ROOT = Path(__file__).resolve().parents[2]
BUILD = ROOT / "tests" / "images" / "build_compose.sh"
APP_UID = 10001  # the Dockerfile's user: it reads the app's secret files and owns the workspace
STAFF_PASSWORD = "pw-compose-staff-" + secrets.token_hex(4)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Stack:
    project: str
    dir: Path
    env: dict[str, str]
    url: str
    workspace: Path
    tokens: dict[str, str] = field(default_factory=dict)

    def compose(self, *args: str, timeout: float = 180, check: bool = True) -> subprocess.CompletedProcess:
        cmd = ["docker-compose", "-p", self.project, "-f", str(self.dir / "compose.resolved.yaml"),
               "--project-directory", str(ROOT), *args]
        out = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        if check and out.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
        return out

    def manage(self, *args: str, env: dict[str, str] | None = None) -> str:
        """`manage.py ...` in the running web container (as its user, with its secrets)."""
        extra = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        return self.compose("exec", "-T", *extra, "web", "python", "manage.py", *args, timeout=60).stdout

    def container(self, service: str):
        docker = docker_client_or_skip(images=False)
        found = docker.containers.list(all=True, filters={"label": [f"com.docker.compose.project={self.project}",
                                                                    f"com.docker.compose.service={service}"]})
        assert len(found) == 1, f"{service}: {found}"
        return found[0]

    def healthy(self) -> bool:
        try:
            return requests.get(f"{self.url}/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def logs(self) -> str:
        return self.compose("logs", "--no-color", "--tail", "400", check=False, timeout=60).stdout


def _write_secrets(directory: Path, pg_port: int, redis_port: int) -> None:
    """The files scripts/compose-secrets.sh makes, with this stack's ports; the app's ones readable by
    the app's uid only (file secrets are bind mounts: the host's owner and mode are what the container sees)."""
    directory.mkdir(mode=0o700)
    pg_password, redis_password = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    files = {
        "django_secret_key": secrets.token_urlsafe(50),
        "postgres_password": pg_password,
        "redis_password": redis_password,
        "database_url": f"postgres://launcher:{pg_password}@postgres:{pg_port}/launcher",
        "redis_url": f"redis://:{redis_password}@redis:{redis_port}/0",
    }
    for name, value in files.items():
        path = directory / name
        path.write_text(value + "\n")
        path.chmod(0o600)
        if name in ("django_secret_key", "database_url", "redis_url"):
            os.chown(path, APP_UID, APP_UID)
    os.chown(directory, 0, 0)
    directory.chmod(0o755)


def _resolved_config(dir: Path, project: str, env: dict[str, str]) -> None:
    """compose.yaml + compose.test.yaml as one file, less the web's published port: Docker refuses
    port bindings on the host network and docker-compose 1.29's overrides can only add ports."""
    out = subprocess.run(["docker-compose", "-p", project, "-f", str(ROOT / "compose.yaml"), "-f",
                          str(ROOT / "compose.test.yaml"), "config"], cwd=ROOT, env=env, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    config = yaml.safe_load(out.stdout)
    for name, service in config["services"].items():
        assert service.get("network_mode") == "host", service  # no bridge: loopback only
        service.pop("ports", None)
        sockets = any("docker.sock" in str(v) for v in service.get("volumes", []))
        assert sockets == (name in ("worker", "watcher")), name  # the web never gets the engine
    (dir / "compose.resolved.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


@pytest.fixture(scope="session")
def stack():
    docker = docker_client_or_skip()  # the fake job image too (tests/images/build.sh)
    if shutil.which("docker-compose") is None:
        skip_or_fail("docker-compose is not installed (apt-get install docker-compose; make services does)")
    subprocess.run(["sh", str(BUILD)], check=True, timeout=600, capture_output=True)  # idempotent
    base = Path(tempfile.mkdtemp(prefix="launcher-compose-"))
    base.chmod(0o755)
    project = f"lctest{uuid.uuid4().hex[:10]}"
    pg_port, redis_port, web_port = free_port(), free_port(), free_port()
    workspace = base / "workspace"
    for sub in ("", "startup", "local"):  # the site's NVFlare workspace, owned by the app (and job) uid
        (workspace / sub).mkdir(mode=0o750)
        os.chown(workspace / sub, APP_UID, APP_UID)
    _write_secrets(base / "secrets", pg_port, redis_port)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(base),
           "COMPOSE_TEST_SECRETS": str(base / "secrets"), "COMPOSE_TEST_PG_PORT": str(pg_port),
           "COMPOSE_TEST_REDIS_PORT": str(redis_port), "COMPOSE_TEST_WEB_PORT": str(web_port),
           "NVFLARE_WORKSPACE_ROOT": str(workspace), "DOCKER_GID": str(os.stat("/var/run/docker.sock").st_gid),
           "LAUNCHER_HOSTNAME": "127.0.0.1"}
    _resolved_config(base, project, env)
    s = Stack(project=project, dir=base, env=env, url=f"http://127.0.0.1:{web_port}", workspace=workspace)
    try:
        try:
            s.compose("up", "-d", "--no-build", timeout=240)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{s.logs()[-8000:]}") from None
        wait_until(s.healthy, timeout=120, interval=0.5, message="the composed web to answer /healthz")
        yield s
    finally:
        output = os.environ.get("LAUNCHER_TEST_OUTPUT")
        if output:
            Path(output).mkdir(parents=True, exist_ok=True)
            (Path(output) / "compose-layout.log").write_text(s.logs())
        s.compose("down", "-v", "--remove-orphans", "-t", "5", check=False, timeout=180)
        for container in docker.containers.list(all=True, filters={"label": f"flare-launcher/site={SITE}"}):
            container.remove(force=True)
        shutil.rmtree(base, ignore_errors=True)


SITE = "compose-site"
IMAGE = "launcher-test/fake-python:1"


@pytest.fixture(scope="session")
def site(stack):
    """A staff user (made with createsuperuser in the web container), a Docker site created over the
    API (its save checks run on the worker, where the workspace and the engine are), four studies,
    and the FL server's site token."""
    stack.manage("createsuperuser", "--noinput", "--username", "staff", "--email", "staff@example.org",
                 env={"DJANGO_SUPERUSER_PASSWORD": STAFF_PASSWORD})
    stack.tokens["staff"] = stack.manage("api_token", "--user", "staff").strip()
    staff = api(stack, "staff")
    created = staff.post(f"{stack.url}/api/v1/sites/", json={"name": SITE, "backend": "docker", "docker": {
        "workspace": str(stack.workspace), "network": "host", "allow_host_network": True, "timeout": 20}})
    assert created.status_code == 201, created.text
    for name, env in {"short": {"FAKE_SLEEP": "6"}, "medium": {"FAKE_SLEEP": "12"}, "long": {"FAKE_SLEEP": "20"},
                      "fails": {"FAKE_SLEEP": "6", "FAKE_EXIT": "3"}}.items():
        study = staff.post(f"{stack.url}/api/v1/sites/{SITE}/studies/", json={"name": name, "env": env})
        assert study.status_code == 201, study.text
    stack.tokens["site"] = stack.manage("api_token", "--site", SITE).strip()
    return SITE


def api(stack: Stack, who: str) -> requests.Session:
    session = requests.Session()
    session.headers["Authorization"] = f"Token {stack.tokens[who]}"
    return session
