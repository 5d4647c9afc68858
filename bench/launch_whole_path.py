"""Launch latency, whole path: from the moment the API submit is sent until the engine itself says
the workload runs, for the process, Docker and Kubernetes backends, in both layouts side by side,
against the raw engine call for the same workload. Interleaved, one run; ends by itself.

    .venv/bin/python bench/launch_whole_path.py [--runs 15]

Layouts: embedded (what `make run` runs: one `manage.py serve`, SQLite, worker and watcher in it)
and production (PostgreSQL database bench_launch_<random> on BENCH_PG, Redis BENCH_LAUNCH_REDIS
(default redis://127.0.0.1:6391/13, flushed), `manage.py serve --workers 2`, a Celery worker,
`manage.py watch`). Kubernetes is the loopback API server (tests/kube_api_server.py) in kubelet mode,
started in this process: each pod's container runs as a local process.

"Running" is the engine's own signal, noted when this process receives it:
- process: the job process (tests/fixtures/fake_nvflare_job.py) writes "<job dir> <pid>" into a FIFO
  this bench reads (FAKE_JOB_STARTS); raw: subprocess.Popen of the same argv, env and cwd.
- Docker: dockerd's `start` event for the job's container (one events subscription); raw: the
  docker SDK's create + start with the same create kwargs (launcher-test/fake-python:1, host network).
- Kubernetes: the loopback API server storing phase Running for the pod; raw: the kubernetes
  client creating the pod's credential Secret and the pod (the same manifests).
Needs root, dockerd, PostgreSQL and Redis (`make services`) and tests/images/build.sh's image.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import docker
from kubernetes import client as kclient
from kubernetes import config as kconfig

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from backends.base import LABEL_JOB_ID, LABEL_SITE, JobRequest  # noqa: E402
from backends.docker import DockerBackend, DockerSiteConfig  # noqa: E402
from backends.docker.specs import create_kwargs  # noqa: E402
from backends.kubernetes import KubernetesBackend, KubernetesSiteConfig  # noqa: E402
from backends.kubernetes import manifests as km  # noqa: E402
from backends.kubernetes.backend import read_startup_kit  # noqa: E402
from backends.process import ProcessBackend, ProcessSiteConfig  # noqa: E402
from bench.harness import (  # noqa: E402
    free_port,
    percentile,
    stop_processes,
    throwaway_database,
    wait_http,
)
from bench.launch_probe.phases import report_phases  # noqa: E402
from flare_launcher_client.client import FlareLauncherClient  # noqa: E402
from tests.kube_api_server import KubeAPIServer  # noqa: E402

IMAGE = "launcher-test/fake-python:1"
REDIS = os.environ.get("BENCH_LAUNCH_REDIS", "redis://127.0.0.1:6391/13")
FIXTURES = ROOT / "tests" / "fixtures"
BACKENDS = ("process", "docker", "kubernetes")
VARIANTS = ("embedded", "production", "backend", "raw")
SETUP = """
import json
from jobs.models import Site
from jobs.services.tokens import token_create
tokens = {}
for name, backend, config in json.loads(%r):
    tokens[backend] = token_create(site=Site.objects.create(name=name, backend=backend, **{backend: config}))[1]
print(json.dumps(tokens))
"""


class Signals:
    """When each workload's engine signal arrived here, by key (job id or pod name)."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.seen: dict[str, float] = {}
        self.wall: dict[str, float] = {}  # the same moments on the wall clock (for --phases)

    def note(self, key: str) -> None:
        now, wall = time.perf_counter(), time.time()
        with self.cond:
            self.seen.setdefault(key, now)
            self.wall.setdefault(key, wall)
            self.cond.notify_all()

    def wait(self, key: str, timeout: float = 30) -> float:
        with self.cond:
            if not self.cond.wait_for(lambda: key in self.seen, timeout):
                raise RuntimeError(f"no running signal for {key} within {timeout}s")
            return self.seen[key]


def listen(signals: Signals, fifo: Path, kube: KubeAPIServer, client: docker.DockerClient) -> None:
    fd = os.open(fifo, os.O_RDWR)  # read-write: writers never block, we never read EOF

    def read_fifo() -> None:
        with os.fdopen(fd, "rb", buffering=0) as pipe:
            buffer = b""
            while chunk := pipe.read(4096):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    signals.note(line.decode().split()[0])  # the job dir's name: the job id

    def read_events() -> None:
        for event in client.events(decode=True, filters={"type": "container", "event": "start"}):
            job_id = event.get("Actor", {}).get("Attributes", {}).get(LABEL_JOB_ID)
            if job_id:
                signals.note(job_id)

    set_status = kube.set_status

    def noting_set_status(name, status, *args, **kw):
        result = set_status(name, status, *args, **kw)
        if status.get("phase") == "Running":
            signals.note(name)
        return result

    kube.set_status = noting_set_status
    for target in (read_fifo, read_events):
        threading.Thread(target=target, daemon=True).start()


def site_configs(tmp: Path, fifo: Path, kubeconfig: str, startup: Path, sleeper: Path, prefix: str):
    process_ws, docker_ws = tmp / f"{prefix}-process-ws", tmp / f"{prefix}-docker-ws"
    for workspace in (process_ws, docker_ws):
        for sub in ("startup", "local"):
            (workspace / sub).mkdir(parents=True)
    os.chown(docker_ws, 1000, 1000)  # the job's uid: the workspace owner
    return {
        "process": (f"{prefix}-process", {
            "workspace": str(process_ws), "default_python_path": sys.executable, "allow_root": True,
            "allowed_modules": ["fake_nvflare_job"],
            "default_job_env": {"PYTHONPATH": str(FIXTURES), "FAKE_JOB_STARTS": str(fifo)}}),
        "docker": (f"{prefix}-docker", {"workspace": str(docker_ws), "network": "host", "allow_host_network": True,
                                        "default_job_env": {"FAKE_SLEEP": "60"}}),
        "kubernetes": (f"{prefix}-k8s", {"config_file_path": kubeconfig, "startup_dir": str(startup),
                                         "default_python_path": str(sleeper), "request_timeout": 10}),
    }


def submit_body(backend: str, site: str, job_id: str, workspace: str) -> dict:
    args = {"job_id": ["-n", job_id], "client_name": ["-c", site]}
    meta: dict = {"job_id": job_id}
    if backend == "process":
        args.update(exe_module=["-m", "fake_nvflare_job"], workspace=["-m", workspace])
    else:
        args.update(exe_module=["-m", "nvflare.private.fed.app.client.worker_process"],
                    workspace=["-m", "/var/tmp/nvflare/workspace"], parent_url=["-p", "tcp://localhost:8004"],
                    auth_token=["-t", "bench-token"])
        meta["launcher_spec"] = {"default": {"docker" if backend == "docker" else "k8s": {"image": IMAGE}}}
    if backend == "kubernetes":
        args.update(startup_config_file=["-s", "fed_client.json"], workspace_owner_fqcn=["", site],
                    workspace_transfer_token=["", secrets.token_urlsafe(24)])
    return {"site": site, "job_id": job_id, "role": "client", "job_meta": meta, "job_args": args}


class Layout:
    """One deployment of the launcher with a process, a Docker and a Kubernetes site."""

    def __init__(self, name: str, tmp: Path, env: dict[str, str], sites: dict):
        self.name, self.tmp, self.env, self.sites = name, tmp, env, sites
        self.procs: list[subprocess.Popen] = []
        self.records: list[dict] = []  # per launch: wall-clock times, for --phases

    def manage(self, *args: str) -> str:
        out = subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=self.env, capture_output=True,
                             text=True)
        if out.returncode:
            raise RuntimeError(f"manage.py {args[0]} failed: {out.stderr[-2000:]}")
        return out.stdout

    def start(self, commands: list[list[str]]) -> None:
        self.manage("migrate", "-v0")
        rows = [(name, backend, config) for backend, (name, config) in self.sites.items()]
        tokens = json.loads(self.manage("shell", "-c", SETUP % json.dumps(rows)).strip().splitlines()[-1])
        for n, command in enumerate(commands):
            with open(self.tmp / f"{self.name}-{n}.log", "w") as log:
                self.procs.append(subprocess.Popen(command, cwd=ROOT, env=self.env, stdout=log,
                                                   stderr=subprocess.STDOUT, start_new_session=True))
        wait_http(f"{self.url}/healthz")
        self.clients = {backend: FlareLauncherClient(self.url, tokens[backend]) for backend in BACKENDS}

    def launch(self, backend: str, signals: Signals) -> tuple[float, int]:
        site, config = self.sites[backend]
        job_id = str(uuid.uuid4())
        body = submit_body(backend, site, job_id, config.get("workspace", ""))
        key = km.pod_name(job_id, site) if backend == "kubernetes" else job_id
        sent, started = time.time(), time.perf_counter()
        job = self.clients[backend].launch(body)
        posted = time.time()
        elapsed = signals.wait(key) - started
        self.records.append({"backend": backend, "job_id": job_id, "pk": job["id"], "sent": sent, "posted": posted,
                             "running": signals.wall[key]})
        return elapsed, job["id"]

    def settle(self, backend: str, pk: int) -> None:
        """Until the job ended (the bench removed its workload): its watcher's work is done."""
        deadline = time.monotonic() + 15
        while (state := self.clients[backend].job(pk)["state"]) not in ("succeeded", "failed", "aborted", "lost",
                                                                        "launch_failed"):
            if time.monotonic() > deadline:
                print(f"  ({self.name} {backend} job {pk} still {state} 15 s after its workload went)", file=sys.stderr)
                return
            time.sleep(0.05)


def base_env(tmp: Path, name: str, phases: bool, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL", "DEBUG")}
    (tmp / f"{name}-var").mkdir(mode=0o700)
    if phases:  # bench/launch_probe/sitecustomize.py notes when each launch reaches each step
        env.update(PYTHONPATH=str(ROOT / "bench" / "launch_probe"), BENCH_PHASES=str(tmp / f"{name}-phases.txt"))
    env.update(LAUNCHER_VAR_DIR=str(tmp / f"{name}-var"), SECRET_KEY=secrets.token_urlsafe(40),
               DJANGO_SETTINGS_MODULE="launcher_site.settings", LAUNCHER_LOG_LEVEL="WARNING",
               LAUNCHER_LOG_FOLLOWERS="0", **extra)  # followers read running jobs' logs: not on the launch path
    return env


class Raw:
    """The engine calls alone, for the same workloads (manifests built untimed by the backends)."""

    def __init__(self, sites: dict, client: docker.DockerClient):
        self.sites, self.client = sites, client
        kinds = {"process": (ProcessBackend, ProcessSiteConfig), "docker": (DockerBackend, DockerSiteConfig),
                 "kubernetes": (KubernetesBackend, KubernetesSiteConfig)}
        self.backends = {kind: cls(site=sites[kind][0], config=config.from_dict(sites[kind][1]))
                         for kind, (cls, config) in kinds.items()}
        k8s_site, k8s_config = sites["kubernetes"]
        self.core = kclient.CoreV1Api(kconfig.new_client_from_config(k8s_config["config_file_path"]))
        self.core.create_namespaced_secret("default", km.startup_secret(  # once, as a site's kit is
            name=km.startup_secret_name(k8s_site), namespace="default", labels={},
            files=read_startup_kit(k8s_config["startup_dir"])))

    def request(self, backend: str, job_id: str) -> JobRequest:
        body = submit_body(backend, self.sites[backend][0], job_id, self.sites[backend][1].get("workspace", ""))
        return JobRequest(site=body["site"], job_pk=uuid.uuid4().hex[:8], job_id=job_id, job_meta=body["job_meta"],
                          job_args=body["job_args"])

    def launch(self, backend: str, signals: Signals) -> tuple[float, None]:
        job_id = str(uuid.uuid4())
        spec = self.backends[backend].prepare(self.request(backend, job_id))
        return getattr(self, f"_{backend}")(spec, job_id, signals), None

    def launch_backend(self, backend: str, signals: Signals) -> tuple[float, None]:
        """The backend's own prepare + launch, called here: no API, no queue, no database."""
        job_id = str(uuid.uuid4())
        request = self.request(backend, job_id)
        engine = self.backends[backend]
        started = time.perf_counter()
        spec = engine.prepare(request)
        engine.launch(spec)
        return signals.wait(spec.name if backend == "kubernetes" else job_id) - started, None

    def _process(self, spec, job_id: str, signals: Signals) -> float:
        env = {**spec.env, "PATH": f"{os.path.dirname(spec.command[0])}:/usr/bin:/bin", "HOME": spec.workdir,
               **spec.credentials}
        started = time.perf_counter()
        os.mkdir(spec.workdir, 0o700)
        subprocess.Popen(spec.command, cwd=spec.workdir, env=env, start_new_session=True,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        return signals.wait(job_id) - started

    def _docker(self, spec, job_id: str, signals: Signals) -> float:
        kwargs = create_kwargs(spec)
        job_dir = Path(self.sites["docker"][1]["workspace"]) / job_id
        started = time.perf_counter()
        job_dir.mkdir()
        os.chown(job_dir, 1000, 1000)
        self.client.containers.create(**kwargs).start()
        return signals.wait(job_id) - started

    def _kubernetes(self, spec, job_id: str, signals: Signals) -> float:
        secret = km.credential_secret(name=spec.options["credential_secret"]["name"], namespace="default",
                                      labels=spec.labels, values=spec.credentials)
        started = time.perf_counter()
        self.core.create_namespaced_secret("default", secret)
        self.core.create_namespaced_pod("default", spec.options["pod"])
        return signals.wait(spec.name) - started


def cleanup(client: docker.DockerClient, core, sites: list[str]) -> None:
    """Remove the bench's containers and pods (the kubelet kills a deleted pod's process)."""
    for container in client.api.containers(all=True, filters={"label": LABEL_SITE}):  # no inspect each
        if (container.get("Labels") or {}).get(LABEL_SITE) in sites:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):  # the launcher removes too
                client.api.remove_container(container["Id"], force=True)
    if core is not None:
        for pod in core.list_namespaced_pod("default").items:
            if (pod.metadata.labels or {}).get(LABEL_SITE) in sites:
                core.delete_namespaced_pod(pod.metadata.name, "default")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--phases", action="store_true", help="also time each step of our launches")
    opts = parser.parse_args()
    subprocess.run([str(ROOT / "tests" / "images" / "build.sh")], check=True)
    client = docker.from_env()
    tmp = Path(tempfile.mkdtemp(prefix="bench-launch-"))
    fifo = tmp / "job-starts.fifo"
    os.mkfifo(fifo)
    startup = tmp / "startup"
    startup.mkdir()
    (startup / "fed_client.json").write_text('{"servers": []}')
    sleeper = tmp / "bin" / "python"
    sleeper.parent.mkdir()
    sleeper.write_text("#!/bin/sh\nexec sleep 60\n")  # the pod's "python": the kubelet runs it on this host
    sleeper.chmod(0o755)
    kube = KubeAPIServer().start()
    kube.enable_kubelet(str(tmp / "kubelet"))
    kubeconfig = kube.write_kubeconfig(str(tmp / "kubeconfig"))
    signals = Signals()
    listen(signals, fifo, kube, client)
    subprocess.run(["redis-cli", "-u", REDIS, "FLUSHDB"], check=True, capture_output=True)
    load = list(os.getloadavg())
    layouts: dict[str, Layout] = {}
    all_sites: list[str] = []
    raw = None
    try:
        with throwaway_database("bench_launch") as database:
            emb_sites = site_configs(tmp, fifo, kubeconfig, startup, sleeper, "emb")
            prod_sites = site_configs(tmp, fifo, kubeconfig, startup, sleeper, "prod")
            raw_sites = site_configs(tmp, fifo, kubeconfig, startup, sleeper, "raw")
            all_sites = [site for sites in (emb_sites, prod_sites, raw_sites) for site, _ in sites.values()]
            port = free_port()
            emb = Layout("embedded", tmp, base_env(tmp, "embedded", opts.phases, DATABASE_URL=f"sqlite:///{tmp}/embedded.sqlite3",
                                                    PORT=str(port)), emb_sites)
            emb.url = f"http://127.0.0.1:{port}"
            emb.start([[sys.executable, "manage.py", "serve", "--port", str(port)]])
            port = free_port()
            prod = Layout("production", tmp, base_env(tmp, "production", opts.phases, DATABASE_URL=database, REDIS_URL=REDIS,
                                                      LAUNCHER_RUN_WATCHERS="false"), prod_sites)
            prod.url = f"http://127.0.0.1:{port}"
            prod.start([[sys.executable, "manage.py", "serve", "--workers", "2", "--port", str(port)],
                        [sys.executable, "-m", "celery", "-A", "launcher_site", "worker", "--loglevel", "WARNING",
                         "--concurrency", "2"],
                        [sys.executable, "manage.py", "watch"]])
            layouts = {"embedded": emb, "production": prod}
            raw = Raw(raw_sites, client)
            results = run_rounds(opts, layouts, raw, signals, client, all_sites)
    finally:
        stop_processes([p for layout in layouts.values() for p in layout.procs])
        cleanup(client, raw.core if raw else None, all_sites)
        kube.stop()
        subprocess.run(["redis-cli", "-u", REDIS, "FLUSHDB"], capture_output=True)
    report(results, opts.runs, (load, list(os.getloadavg())))
    if opts.phases:
        report_phases(layouts)
    shutil.rmtree(tmp, ignore_errors=True)  # kept (with the launchers' logs) when the bench failed


def run_rounds(opts, layouts: dict, raw: Raw, signals: Signals, client, sites: list[str]) -> dict:
    launchers = {"embedded": layouts["embedded"].launch, "production": layouts["production"].launch,
                 "backend": raw.launch_backend, "raw": raw.launch}
    results: dict[tuple[str, str], list[float]] = {(b, v): [] for b in BACKENDS for v in VARIANTS}
    for i in range(opts.warmup + opts.runs):
        if i == opts.warmup:
            for layout in layouts.values():
                layout.records.clear()
        for b, backend in enumerate(BACKENDS):
            first = (i + b) % len(VARIANTS)  # each variant goes first equally often
            order = VARIANTS[first:] + VARIANTS[:first]
            for variant in order:
                elapsed, pk = launchers[variant](backend, signals)
                if i >= opts.warmup:
                    results[(backend, variant)].append(elapsed * 1000)
                cleanup(client, raw.core, sites)
                if pk is not None:
                    layouts[variant].settle(backend, pk)
        print(f"round {i + 1}/{opts.warmup + opts.runs}: " + "  ".join(
            f"{b[:4]}/{v[:4]} {results[(b, v)][-1]:.0f}" for b in BACKENDS for v in VARIANTS
            if results[(b, v)] and i >= opts.warmup), flush=True)
    return results


def report(results: dict, runs: int, load: tuple[list[float], list[float]]) -> None:
    print(f"\n{runs} launches per cell, interleaved; ms from the first call (API submit, backend.prepare, engine "
          f"call) to the engine's running signal; load average {load[0][0]:.1f} at start, {load[1][0]:.1f} at end")
    print("| backend | raw engine call p50 / p90 | backend.prepare+launch p50 / p90 (x raw) | "
          "embedded: submit -> running p50 / p90 (x raw) | production: submit -> running p50 / p90 (x raw) |")
    print("|---|---|---|---|---|")
    for backend in BACKENDS:
        raw_median = percentile(results[(backend, "raw")], 50)
        cells = []
        for variant in ("raw", "backend", "embedded", "production"):
            values = results[(backend, variant)]
            ratio = "" if variant == "raw" else f" ({percentile(values, 50) / raw_median:.2f})"
            cells.append(f"{percentile(values, 50):.0f} / {percentile(values, 90):.0f}{ratio}")
        print(f"| {backend} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
