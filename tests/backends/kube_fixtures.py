"""Fixtures for the Kubernetes backend tests: a loopback API server per test, a backend pointed at
it through a real kubeconfig, a controllable clock and NVFlare-shaped job requests. No Django."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from backends.base import JobRequest, StudyRuntime
from backends.kubernetes import KubernetesBackend, KubernetesSiteConfig
from tests.kube_api_server import KubeAPIServer

SITE = "site-1"
JOB_ID = "550e8400-e29b-41d4-a716-446655440000"
IMAGE = "registry.example/nvflare-job:2.6"
TOKEN, SIGNATURE, SSID = "tok-Secret-7f3a", "sig-Secret-91bc", "ssid-Secret-42"
TRANSFER_TOKEN = "xfer-Secret-0123456789abcdefghij"  # the shape of secrets.token_urlsafe(24)
OWNER_FQCN = "site-1"
CREDENTIAL_VALUES = (TOKEN, SIGNATURE, SSID, TRANSFER_TOKEN)
STARTUP_KIT = {"fed_client.json": b'{"servers": []}', "rootCA.pem": b"-----CA-----", "client.crt": b"crt",
               "client.key": b"key", "start.sh": b"#!/bin/sh\n"}  # start.sh: dropped (not .crt/.key/.pem/.json)


class FakeClock:
    """Wall clock the test moves by hand, shared by the backend and the loopback API server (which
    stamps creationTimestamp and condition lastTransitionTime with it): the pending and start timers
    count from those. Starts on a whole second, as the API's timestamps do."""

    def __init__(self) -> None:
        self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def client_args(job_id: str = JOB_ID) -> dict[str, list[Any]]:
    return {
        "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
        "workspace": ["-m", "/var/tmp/nvflare/workspace"],
        "startup_dir": ["-w", "/var/tmp/nvflare/workspace/startup"],
        "job_id": ["-n", job_id],
        "client_name": ["-c", SITE],
        "parent_url": ["-p", "tcp://site-1-parent:8004"],
        "auth_token": ["-t", TOKEN],
        "auth_signature": ["-ts", SIGNATURE],
        "ssid": ["-d", SSID],
        "startup_config_file": ["-s", "fed_client.json"],
        "workspace_transfer_token": ["", TRANSFER_TOKEN],
        "workspace_owner_fqcn": ["", OWNER_FQCN],
    }


def job_request(*, k8s: dict | None = None, job_id: str = JOB_ID, study: StudyRuntime | None = None,
                byoc: bool = True, job_meta: dict | None = None, job_pk: str = "42", **kw: Any) -> JobRequest:
    meta = job_meta if job_meta is not None else {
        "launcher_spec": {SITE: {"k8s": {"image": IMAGE, **(k8s or {})}}}}
    return JobRequest(site=SITE, job_pk=job_pk, job_id=job_id, job_meta=meta, job_args=client_args(job_id),
                      study=study, byoc=byoc, **kw)


@pytest.fixture
def kube_server(clock):
    server = KubeAPIServer(clock=clock).start()
    yield server
    server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def write_startup_kit(directory: Path) -> str:
    directory.mkdir(parents=True, exist_ok=True)
    for name, data in STARTUP_KIT.items():
        (directory / name).write_bytes(data)
    return str(directory)


@pytest.fixture
def make_backend(kube_server: KubeAPIServer, tmp_path: Path, clock: FakeClock):
    """make_backend(**site_config) -> a KubernetesBackend for SITE talking to the loopback server
    (with a startup kit unless `startup_dir` is given)."""
    kubeconfig = kube_server.write_kubeconfig(str(tmp_path / "kubeconfig"))
    startup = write_startup_kit(tmp_path / "parent-startup")

    def make(**config: Any) -> KubernetesBackend:
        cfg = KubernetesSiteConfig.from_dict({"config_file_path": kubeconfig, "request_timeout": 5,
                                              "startup_dir": startup, **config})
        backend = KubernetesBackend(site=SITE, config=cfg, clock=clock)
        backend.watch_timeout = 2
        return backend

    return make


@pytest.fixture
def backend(make_backend) -> KubernetesBackend:
    return make_backend()
