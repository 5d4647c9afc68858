"""launch_job latency of the NVFlare-side client against a real `manage.py serve` (embedded mode,
SQLite, a process-backend site): the old way (launch, then GET the job every 0.5 s until it runs)
against the long poll (launch, then GET /wait/?until=running), interleaved, one run.

    .venv/bin/python bench/client_launch.py [--runs 20]

Each job is the tests' fake NVFlare job (tests/fixtures/fake_nvflare_job.py) sleeping 1 s, run as
root (`allow_root`: a bench, not a deployment). Loopback only; everything stops when it ends.
Prints the median and p90 of each, in milliseconds, and of the launch request alone.
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.harness import free_port, percentile  # noqa: E402
from flare_launcher_client import FlareLauncherJobLauncher  # noqa: E402
from flare_launcher_client.client import FlareLauncherClient  # noqa: E402

SETUP = """
from jobs.models import Site
from jobs.services.tokens import token_create
site = Site.objects.create(name="site-1", backend="process", process={{
    "workspace": {workspace!r}, "default_python_path": {python!r}, "allow_root": True,
    "allowed_modules": ["fake_nvflare_job"], "default_job_env": {{"PYTHONPATH": {fixtures!r}}}}})
print(token_create(site=site)[1])
"""


def job_args(job_id: str, workspace: str) -> dict:
    return {"exe_module": ["-m", "fake_nvflare_job"], "workspace": ["-m", workspace], "job_id": ["-n", job_id],
            "client_name": ["-c", "site-1"], "set_options": None}


def old_style_launch(client: FlareLauncherClient, job_id: str, workspace: str, posts: list[float]) -> str:
    """What launch_job did before: submit, then poll the job every 0.5 s until it left queued/starting."""
    args = {k: v for k, v in job_args(job_id, workspace).items() if v}
    started = time.perf_counter()
    job = client.launch({"site": "site-1", "job_id": job_id, "role": "client", "job_meta": {"job_id": job_id},
                         "job_args": args, "set_options": ["sleep=1"]})
    posts.append((time.perf_counter() - started) * 1000)
    while job["state"] in ("queued", "starting"):
        time.sleep(0.5)
        job = client.job(job["id"])
    return job["state"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    tmp = Path(tempfile.mkdtemp(prefix="bench-client-launch-"))
    workspace = tmp / "workspace"
    for sub in ("", "startup", "local"):
        (workspace / sub).mkdir(exist_ok=True)
    (tmp / "var").mkdir(mode=0o700)
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "DATABASE_URL", "DEBUG")}
    env.update(DATABASE_URL=f"sqlite:///{tmp}/launcher.sqlite3", LAUNCHER_VAR_DIR=str(tmp / "var"),
               SECRET_KEY="bench-client-launch", DJANGO_SETTINGS_MODULE="launcher_site.settings",
               LAUNCHER_LOG_LEVEL="WARNING")
    manage = [sys.executable, "manage.py"]
    subprocess.run([*manage, "migrate", "-v0"], cwd=ROOT, env=env, check=True)
    setup = SETUP.format(workspace=str(workspace), python=sys.executable, fixtures=str(ROOT / "tests" / "fixtures"))
    token = subprocess.run([*manage, "shell", "-c", setup], cwd=ROOT, env=env, check=True, capture_output=True,
                           text=True).stdout.strip().splitlines()[-1]
    log = open(tmp / "server.log", "w")
    server = subprocess.Popen([*manage, "serve", "--port", str(port)], cwd=ROOT, env=env, stdout=log,
                              stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if requests.get(f"{url}/healthz", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit(f"server did not start; see {tmp / 'server.log'}")
            time.sleep(0.2)
        os.environ["FLARE_LAUNCHER_TOKEN"] = token
        launcher = FlareLauncherJobLauncher(url=url, site="site-1", timeout=60)
        old_client = FlareLauncherClient(url, token)
        old, new, posts = [], [], []
        for i in range(runs):
            started = time.perf_counter()
            assert old_style_launch(old_client, f"old-{i}", str(workspace), posts) == "running"
            old.append((time.perf_counter() - started) * 1000)
            args = {k: v for k, v in job_args(f"new-{i}", str(workspace)).items() if v}
            started = time.perf_counter()
            handle = launcher.launch_job({"job_id": f"new-{i}"}, {"job_process_args": args, "set_options": ["sleep=1"]})
            new.append((time.perf_counter() - started) * 1000)
            assert handle.job["state"] == "running", handle.job
        for name, values in (("polling every 0.5 s", old), ("long poll until=running", new),
                             ("(the POST /jobs/ alone)", posts)):
            print(f"{name:26s} median {statistics.median(values):7.1f} ms   p90 {percentile(values, 90):7.1f} ms   "
                  f"min {min(values):6.1f} ms   (n={len(values)})")
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()


if __name__ == "__main__":
    main()
