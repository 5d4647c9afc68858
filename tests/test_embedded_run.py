"""The embedded default as `make run` starts it: a real server process on SQLite with the worker
and watchers inside; Ctrl-C stops it cleanly and a second start keeps the data."""

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.util import wait_until

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.embedded


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def embedded_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "SECRET_KEY", "DEBUG")}
    env.update(LAUNCHER_VAR_DIR=str(tmp_path / "var"), LAUNCHER_ADMIN_USER="root-admin",
               LAUNCHER_ADMIN_PASSWORD="correct-horse-battery", PORT=str(free_port()),
               DJANGO_SETTINGS_MODULE="launcher_site.settings")
    return env


def manage(env, *args):
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)


def start_server(env):
    proc = subprocess.Popen([sys.executable, "manage.py", "serve"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{env['PORT']}"

    def up():
        assert proc.poll() is None, proc.stdout.read()
        try:
            return requests.get(f"{base}/healthz", timeout=1).status_code == 200
        except requests.ConnectionError:
            return False

    wait_until(up, timeout=30, interval=0.2, message="server to answer /healthz")
    return proc, base


def stop_server(proc):
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_embedded_server_serves_login_admin_and_health_and_stops_cleanly(embedded_env):
    assert manage(embedded_env, "migrate", "--noinput").returncode == 0
    out = manage(embedded_env, "ensure_admin")
    assert "created admin account 'root-admin'" in out.stdout
    proc, base = start_server(embedded_env)
    try:
        health = requests.get(f"{base}/healthz", timeout=5).json()
        assert health == {"status": "ok", "database": "ok", "channel_layer": "ok"}
        assert "Log in" in requests.get(f"{base}/accounts/login/", timeout=5).text
        assert requests.get(f"{base}/admin/login/", timeout=5).status_code == 200
        # The overview needs a login, and the admin account works.
        session = requests.Session()
        page = session.get(f"{base}/", timeout=5)
        assert page.url.startswith(f"{base}/accounts/login/")
        token = session.cookies["csrftoken"]
        page = session.post(f"{base}/accounts/login/?next=/", timeout=5, headers={"Referer": f"{base}/accounts/login/"},
                            data={"username": "root-admin", "password": "correct-horse-battery",
                                  "csrfmiddlewaretoken": token, "next": "/"})
        assert "Signed in as" in page.text and "root-admin" in page.text
    finally:
        code = stop_server(proc)
    assert code == 0
    output = proc.stdout.read()
    assert "Traceback" not in output and " ERROR " not in output, output

    # A second run keeps everything: the admin exists already and no migration is lost.
    assert "exists" in manage(embedded_env, "ensure_admin").stdout
    assert manage(embedded_env, "migrate", "--noinput").returncode == 0
