"""What sampling a running job's resources costs (jobs.services.usage), per sample and per job.

Starts N real containers (the test image, sleeping) and N real processes, then times
  - the SDK's container.stats(stream=False)            (waits for two daemon samples)
  - the raw API stats?stream=false&one-shot=true         (one sample, next collection tick)
  - the container's cgroup files (what the sampler uses with a local daemon)
  - /proc of a process job's group (the process backend)
and the sampler's CPU: process CPU time over wall time while sampling every job once per interval.

    .venv/bin/python bench/resource_sampling.py [--jobs 5] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import docker  # noqa: E402

from backends.docker.client import DockerApi  # noqa: E402
from backends.docker.config import DockerSiteConfig  # noqa: E402
from backends.docker.stats import container_usage  # noqa: E402
from backends.process_stats import process_group_usage  # noqa: E402

IMAGE = "launcher-test/fake-python:1"


def timed(function, *args, **kwargs) -> float:
    started = time.perf_counter()
    function(*args, **kwargs)
    return (time.perf_counter() - started) * 1000


def report(name: str, samples: list[float]) -> None:
    print(f"{name:<44} median {statistics.median(samples):8.2f} ms   max {max(samples):8.2f} ms   n={len(samples)}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    client = docker.from_env()
    containers = []
    for n in range(args.jobs):
        container = client.containers.create(IMAGE, ["python", "x"], environment={"FAKE_SLEEP": "600"},
                                             labels={"bench": "resource_sampling"}, name=f"bench-usage-{os.getpid()}-{n}")
        container.start()
        containers.append(container)
    processes = [subprocess.Popen(["sleep", "600"], start_new_session=True) for _ in range(args.jobs)]
    api = DockerApi(DockerSiteConfig.from_dict({"workspace": "/tmp"}))
    try:
        sdk, one_shot, cgroup, proc = [], [], [], []
        for _ in range(min(args.rounds, 2)):  # the slow ones: two rounds are plenty
            for container in containers:
                sdk.append(timed(container.stats, stream=False))
                one_shot.append(timed(client.api.stats, container.id, stream=False, one_shot=True))
        for container in containers:
            container_usage(api, container.name)  # first call per job: one inspect for the id
        cpu_before, wall_before = time.process_time(), time.perf_counter()
        for _ in range(args.rounds):
            for container in containers:
                cgroup.append(timed(container_usage, api, container.name))
            for process in processes:
                proc.append(timed(process_group_usage, process.pid))
        cpu = time.process_time() - cpu_before
        wall = time.perf_counter() - wall_before
        report("SDK container.stats(stream=False)", sdk)
        report("raw API stats one-shot=true", one_shot)
        report("cgroup files (sampler, Docker)", cgroup)
        report("/proc process group (sampler, process)", proc)
        per_sample = cpu * 1000 / (len(cgroup) + len(proc))
        print(f"sampler CPU: {per_sample:.2f} ms CPU per sample; at one sample per job every 10 s, "
              f"{per_sample / 10_000 * 100:.4f} % of one core per running job (wall {wall * 1000:.0f} ms "
              f"for {len(cgroup) + len(proc)} samples)")
        usage = container_usage(api, containers[0].name)
        print("example:", usage, process_group_usage(processes[0].pid))
    finally:
        for container in containers:
            container.remove(force=True)
        for process in processes:
            process.kill()
            process.wait()


if __name__ == "__main__":
    main()
