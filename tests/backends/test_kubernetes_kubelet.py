"""The loopback API server's kubelet mode (tests/kube_kubelet.py), driven through KubernetesBackend:
a pod's container runs as a local process with its Secret env and volumes, its exit code and output
become the pod's status and log, and deleting the pod kills it."""

from __future__ import annotations

import copy
import os
import sys
from dataclasses import replace

import pytest

from backends.base import Handle, JobState
from backends.kubernetes import manifests as km
from tests.backends.kube_fixtures import (  # noqa: F401 - fixtures
    SITE,
    TOKEN,
    TRANSFER_TOKEN,
    job_request,
    make_backend,
)
from tests.kube_api_server import KubeAPIServer
from tests.util import wait_until

MOUNT = "/var/tmp/nvflare/workspace"


@pytest.fixture
def kube_server(tmp_path):
    """Real time here (the kubelet stamps statuses as they happen)."""
    server = KubeAPIServer().start()
    server.enable_kubelet(str(tmp_path / "kubelet"))
    yield server
    server.stop()


@pytest.fixture
def clock():
    import time

    return time.time


def run(backend, script: str, **kw):
    spec = backend.prepare(replace(job_request(**kw), command=(sys.executable, "-c", script)))
    return spec, backend.launch(spec)


def ended(backend, handle):
    return wait_until(lambda: (o := backend.inspect(handle)).state.is_terminal and o, timeout=30,
                      message="the pod to end")


def test_the_container_runs_with_secret_env_the_startup_kit_and_a_private_workspace(kube_server, make_backend):
    backend = make_backend()
    script = (
        "import os, json, sys\n"
        "assert os.environ['NVFLARE_JOB_AUTH_TOKEN'] == %r\n"
        "assert os.environ['NVFL_WORKSPACE_TRANSFER_TOKEN'] == %r\n"
        "kit = json.load(open('%s/startup/fed_client.json'))\n"
        "assert not os.path.exists('%s/startup/start.sh')\n"
        "open('%s/result.txt', 'w').write('trained')\n"
        "print('PYTHONPATH', os.environ['PYTHONPATH'])\n"
        "print('kit', kit, 'cwd', os.getcwd())\n"
        "sys.exit(0)\n" % (TOKEN, TRANSFER_TOKEN, MOUNT, MOUNT, MOUNT))
    spec, handle = run(backend, script)
    obs = ended(backend, handle)
    assert (obs.state, obs.return_code) == (JobState.SUCCEEDED, 0), backend.logs(handle)
    pod_root = kube_server.kubelet.host_path(handle.ref, MOUNT)
    assert open(os.path.join(pod_root, "result.txt")).read() == "trained"
    logs = backend.logs(handle)
    assert f"PYTHONPATH {pod_root}/{spec.job_id}/app_{SITE}/custom" in logs  # mount paths rewritten
    assert "kit {'servers': []}" in logs
    phases = [o["status"]["phase"] for _, r, _, t, o in kube_server.changes if r == "pods"]
    assert phases[0] == "Pending" and phases[-1] == "Succeeded" and "Running" in phases


def test_the_exit_code_is_the_containers(kube_server, make_backend):
    backend = make_backend()
    _, handle = run(backend, "import sys; print('bye'); sys.exit(3)")
    obs = ended(backend, handle)
    assert (obs.state, obs.return_code) == (JobState.FAILED, 9)  # NVFlare on Kubernetes: 3 -> 9
    status = kube_server.pod(handle.ref)["status"]
    assert status["phase"] == "Failed"
    assert status["containerStatuses"][0]["state"]["terminated"]["exitCode"] == 3
    assert "bye" in backend.logs(handle)


def test_deleting_the_pod_kills_its_process(kube_server, make_backend):
    backend = make_backend()
    _, handle = run(backend, "import time; print('up', flush=True); time.sleep(120)")
    wait_until(lambda: "up" in backend.logs(handle), timeout=20, message="the container to start")
    proc = kube_server.kubelet.procs[("default", handle.ref)]
    backend.terminate(handle)
    wait_until(lambda: proc.poll() is not None, timeout=10, message="the process to be killed")
    assert kube_server.pod(handle.ref) is None


def test_a_missing_secret_leaves_the_pod_pending_with_failed_mount_and_the_backend_fails_it(kube_server,
                                                                                            make_backend):
    backend = make_backend()
    spec = backend.prepare(replace(job_request(), command=(sys.executable, "-c", "print('never')")))
    pod = copy.deepcopy(spec.options["pod"])
    for volume in pod["spec"]["volumes"]:
        if volume["name"] == km.STARTUP_VOLUME:
            volume["secret"]["secretName"] = "nvflare-startup-never-made"
    backend.api.core().create_namespaced_pod("default", pod)  # as a launcher that forgot the Secret would
    wait_until(lambda: any(e["reason"] == "FailedMount" for e in kube_server.objects("events")), timeout=10,
               message="a FailedMount event")
    assert kube_server.pod(spec.name)["status"]["phase"] == "Pending"
    obs = backend.inspect(Handle("kubernetes", spec.name))
    assert (obs.state, obs.return_code, obs.reason) == (JobState.FAILED, 101, "FailedMount")
    assert "never" not in kube_server.pod_logs.get(spec.name, "")


def test_a_secret_ref_that_cannot_be_resolved_stops_the_container_before_it_runs(kube_server, make_backend):
    backend = make_backend()
    spec = backend.prepare(replace(job_request(), command=(sys.executable, "-c", "print('ran')")))
    env = spec.options["pod"]["spec"]["containers"][0]["env"]  # a template could name any Secret
    env.append({"name": "EXTRA", "valueFrom": {"secretKeyRef": {"name": "no-such-secret", "key": "k"}}})
    backend.launch(spec)
    waiting = wait_until(lambda: (kube_server.pod(spec.name)["status"].get("containerStatuses") or [{}])[0]
                         .get("state", {}).get("waiting", {}).get("reason") == "CreateContainerConfigError",
                         timeout=10, message="CreateContainerConfigError")
    assert waiting
    obs = backend.inspect(Handle("kubernetes", spec.name))
    assert (obs.state, obs.return_code, obs.reason) == (JobState.FAILED, 101, "CreateContainerConfigError")
    assert "ran" not in kube_server.pod_logs.get(spec.name, "")
