"""Launch latency: DockerBackend.prepare()+launch() until running, against the raw Docker SDK doing
the same create + start + wait-for-running with the same run kwargs. Interleaved, one run.

    .venv/bin/python bench/launch_docker.py [--runs 20]

Needs a running dockerd, the test image and network (tests/images/build.sh). Run as root (the job
directory is chowned to the job uid). Prints the medians and the ratio (target <= 1.15).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backends.base import LABEL_SITE, JobRequest, JobState  # noqa: E402
from backends.docker import DockerBackend, DockerSiteConfig  # noqa: E402
from backends.docker.specs import create_kwargs  # noqa: E402

IMAGE = "launcher-test/fake-python:1"
UID = GID = 1000


def make_request(site: str, job_id: str) -> JobRequest:
    return JobRequest(
        site=site, job_pk=uuid.uuid4().hex, job_id=job_id,
        job_meta={"launcher_spec": {"default": {"docker": {"image": IMAGE}}}},
        job_args={
            "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
            "workspace": ["-m", "/var/tmp/nvflare/workspace"], "job_id": ["-n", job_id],
            "client_name": ["-c", site], "parent_url": ["-p", "tcp://localhost:8004"],
            "auth_token": ["-t", "bench-token"],
        },
    )


def wait_running(read_status, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while read_status() != "running":
        if time.monotonic() > deadline:
            raise RuntimeError("container did not reach running")
        time.sleep(0.005)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=20)
    runs = parser.parse_args().runs
    subprocess.run([str(Path(__file__).resolve().parents[1] / "tests" / "images" / "build.sh")], check=True)

    site = f"bench-{uuid.uuid4().hex[:6]}"
    client = docker.from_env()
    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp) / "ws"
        for sub in ("startup", "local"):
            (workspace / sub).mkdir(parents=True)
        os.chown(workspace, UID, GID)
        backend = DockerBackend(site=site, config=DockerSiteConfig.from_dict(
            {"workspace": str(workspace), "default_job_env": {"FAKE_SLEEP": "60"}}))

        def launch_backend(job_id: str) -> float:
            started = time.perf_counter()
            handle = backend.launch(backend.prepare(make_request(site, job_id)))
            wait_running(lambda: "running" if backend.inspect(handle).state == JobState.RUNNING else "")
            return time.perf_counter() - started

        def launch_raw(job_id: str) -> float:
            kwargs = create_kwargs(backend.prepare(make_request(site, job_id)))  # same kwargs, built untimed
            job_dir = workspace / job_id
            started = time.perf_counter()
            job_dir.mkdir()
            os.chown(job_dir, UID, GID)
            container = client.containers.create(**kwargs)
            container.start()

            def status() -> str:
                container.reload()
                return container.status

            wait_running(status)
            return time.perf_counter() - started

        timings: dict[str, list[float]] = {"backend": [], "raw": []}
        try:
            for i in range(runs + 2):  # the first two rounds warm up connections and are not counted
                for kind, launch in (("backend", launch_backend), ("raw", launch_raw)) if i % 2 else (
                        ("raw", launch_raw), ("backend", launch_backend)):
                    elapsed = launch(f"{kind}-{i}")
                    if i >= 2:
                        timings[kind].append(elapsed)
                for container in client.containers.list(all=True, filters={"label": f"{LABEL_SITE}={site}"}):
                    container.remove(force=True)
        finally:
            for container in client.containers.list(all=True, filters={"label": f"{LABEL_SITE}={site}"}):
                container.remove(force=True)

    backend_median = statistics.median(timings["backend"]) * 1000
    raw_median = statistics.median(timings["raw"]) * 1000
    print(f"runs: {runs} each, interleaved")
    print(f"DockerBackend prepare+launch until running: median {backend_median:.1f} ms")
    print(f"raw docker SDK create+start until running:  median {raw_median:.1f} ms")
    print(f"ratio backend/raw: {backend_median / raw_median:.3f} (target <= 1.15)")


if __name__ == "__main__":
    main()
