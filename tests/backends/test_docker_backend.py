"""DockerBackend against the real daemon: launch, observe, terminate, adopt, clean up. What every
backend does alike is in test_contract.py."""

from __future__ import annotations

import http.server
import json
import os
import threading
import uuid

import pytest

from backends.base import (
    LABEL_MANAGED_BY,
    LABEL_SITE,
    MANAGED_BY,
    BackendError,
    DatasetSpec,
    Handle,
    JobState,
    StudyRuntime,
)
from backends.docker import DockerBackend, DockerSiteConfig
from backends.docker.specs import CONTAINER_ROOT, create_kwargs
from tests.backends.conftest import IMAGE, SIGNATURE, SSID, TOKEN
from tests.util import skip_or_fail, wait_until

pytestmark = pytest.mark.docker


def _terminal(backend, handle, timeout=15):
    return wait_until(lambda: (o := backend.inspect(handle)).state.is_terminal and o, timeout=timeout)


def _running(backend, handle):
    return wait_until(lambda: (o := backend.inspect(handle)).state == JobState.RUNNING and o)


def test_successful_job(docker_backend, docker_request, docker_workspace, docker_site, docker_client):
    spec = docker_backend.prepare(docker_request(job_id="ok-1"))
    handle = docker_backend.launch(spec)
    assert handle == Handle(backend="docker", ref=f"{docker_site}-ok-1")

    observation = _terminal(docker_backend, handle)
    assert (observation.state, observation.return_code, observation.exit_code) == (JobState.SUCCEEDED, 0, 0)
    assert observation.job_pk == spec.job_pk
    assert "FAKE-PYTHON ARGV: -u -m nvflare.private.fed.app.client.worker_process" in observation.logs_tail
    assert f"FAKE-PYTHON USER: 1000:1000 CWD: {CONTAINER_ROOT}/ok-1" in observation.logs_tail
    # the job wrote into its own (rw) directory, created at launch and owned by the job user
    job_dir = docker_workspace / "ok-1"
    assert (os.stat(job_dir).st_uid, os.stat(job_dir).st_gid) == (1000, 1000)
    assert (job_dir / "fake-python.argv").read_text().split("\n")[:4] == ["-u", "-m", "nvflare.private.fed.app.client.worker_process", "-m"]
    assert f"tcp://{docker_site}:8004" in (job_dir / "fake-python.argv").read_text()
    assert TOKEN not in (job_dir / "fake-python.argv").read_text()
    assert docker_backend.logs(handle, tail=100).count("FAKE-PYTHON ARGV") == 1
    # not auto-removed: still there for logs until cleanup()
    assert docker_client.containers.get(handle.ref).status == "exited"
    docker_backend.cleanup(handle)
    docker_backend.cleanup(handle)  # missing is fine
    assert docker_backend.inspect(handle).state == JobState.LOST and docker_backend.inspect(handle).reason == "vanished"
    assert docker_backend.logs(handle) == ""


@pytest.mark.parametrize(("exit_code", "state", "code"), [(3, JobState.FAILED, 1), (9, JobState.ABORTED, 9),
                                                          (101, JobState.FAILED, 1)])
def test_nonzero_exit(docker_backend, docker_request, exit_code, state, code):
    handle = docker_backend.launch(docker_backend.prepare(docker_request(env={"FAKE_EXIT": str(exit_code)})))
    observation = _terminal(docker_backend, handle)
    assert (observation.state, observation.return_code, observation.exit_code) == (state, code, exit_code)


def test_terminate_running_job_twice_then_after_cleanup(docker_backend, docker_request):
    handle = docker_backend.launch(docker_backend.prepare(docker_request(env={"FAKE_SLEEP": "60"})))
    _running(docker_backend, handle)

    first = docker_backend.terminate(handle)
    assert (first.state, first.return_code) == (JobState.ABORTED, 9)
    assert first.exit_code == 137
    second = docker_backend.terminate(handle)
    assert (second.state, second.return_code) == (JobState.ABORTED, 9)
    assert docker_backend.inspect(handle, terminate_requested=True).state == JobState.ABORTED
    assert docker_backend.inspect(handle).exit_code == 137  # the daemon's own view: killed

    docker_backend.cleanup(handle)
    gone = docker_backend.terminate(handle)
    assert (gone.state, gone.return_code, gone.reason) == (JobState.ABORTED, 9, "vanished")


def test_terminate_a_container_that_never_started(docker_backend, docker_request, docker_client, docker_site_containers):
    spec = docker_backend.prepare(docker_request())
    os.makedirs(spec.options["mounts"][3]["Source"], exist_ok=True)
    docker_client.containers.create(**create_kwargs(spec))
    observation = docker_backend.terminate(Handle(backend="docker", ref=spec.name))
    assert (observation.state, observation.return_code, observation.job_pk) == (JobState.ABORTED, 9, spec.job_pk)
    assert docker_site_containers() == []


def test_terminate_after_exit_keeps_the_jobs_own_code(docker_backend, docker_request):
    handle = docker_backend.launch(docker_backend.prepare(docker_request()))
    _terminal(docker_backend, handle)
    observation = docker_backend.terminate(handle)
    assert (observation.state, observation.return_code) == (JobState.SUCCEEDED, 0)


def test_oom_kill_reported(docker_backend, docker_request):
    study = StudyRuntime(name="cancer", env={"FAKE_OOM": "1"}, docker_kwargs={"memswap_limit": 16 * 2**20})
    meta = {"launcher_spec": {"default": {"docker": {"image": IMAGE}}}, "resource_spec": {"@default": {"memory": "16Mi"}}}
    handle = docker_backend.launch(docker_backend.prepare(docker_request(job_meta=meta, study=study)))
    observation = _terminal(docker_backend, handle)
    if observation.reason != "OOMKilled":
        skip_or_fail(f"this kernel did not OOM-kill under a 16 MiB limit: {observation}")
    assert (observation.state, observation.return_code, observation.exit_code) == (JobState.FAILED, 1, 137)


def test_container_matches_the_spec(docker_backend, docker_request, docker_client, docker_workspace, docker_data_root, docker_site):
    backend_with_env = DockerBackend(
        site=docker_site, config=DockerSiteConfig.from_dict({**docker_backend.config.to_dict(), "default_job_env": {"A": "site", "B": "site", "USER": "x"}}),
        allowed_data_roots=(str(docker_data_root),),
    )
    (docker_workspace / "local" / "custom").mkdir()
    request = docker_request(job_id="spec-1", env={"B": "study", "FAKE_SLEEP": "30"})
    spec = backend_with_env.prepare(request)
    handle = backend_with_env.launch(spec)
    attrs = docker_client.containers.get(handle.ref).attrs

    mounts = attrs["HostConfig"]["Mounts"]
    assert [(m["Type"], m["Target"], m.get("ReadOnly", False)) for m in mounts] == [
        ("tmpfs", CONTAINER_ROOT, False),
        ("bind", f"{CONTAINER_ROOT}/startup", True),
        ("bind", f"{CONTAINER_ROOT}/local", True),
        ("bind", f"{CONTAINER_ROOT}/spec-1", False),
        ("bind", "/data/cancer/images", True),
        ("bind", "/data/cancer/scratch", False),
    ]
    assert mounts[0]["TmpfsOptions"]["Mode"] == 0o1777
    live = {m["Destination"]: (m["Source"], m["RW"]) for m in attrs["Mounts"] if m["Type"] == "bind"}
    assert live["/data/cancer/images"] == (str(docker_data_root / "images"), False)
    assert live[f"{CONTAINER_ROOT}/spec-1"] == (str(docker_workspace / "spec-1"), True)
    assert not any("docker.sock" in m.get("Source", "") for m in attrs["Mounts"])

    env = dict(item.split("=", 1) for item in attrs["Config"]["Env"])
    assert (env["A"], env["B"], env["USER"], env["HOME"]) == ("site", "study", "nvflare", "/tmp")
    assert env["PYTHONPATH"] == f"{CONTAINER_ROOT}/local/custom"
    assert (env["NVFLARE_JOB_AUTH_TOKEN"], env["NVFLARE_JOB_TOKEN_SIGNATURE"], env["NVFLARE_JOB_SSID"]) == (TOKEN, SIGNATURE, SSID)
    job_env = wait_until(lambda: (docker_workspace / "spec-1" / "fake-python.env").exists() and (docker_workspace / "spec-1" / "fake-python.env").read_text())
    assert f"NVFLARE_JOB_AUTH_TOKEN={TOKEN}" in job_env  # the job itself receives them

    visible = json.dumps({"cmd": attrs["Config"]["Cmd"], "labels": attrs["Config"]["Labels"],
                          "spec": spec.redacted(), "name": attrs["Name"]})
    for secret in (TOKEN, SIGNATURE, SSID):
        assert secret not in visible

    assert attrs["Config"]["Labels"].items() >= dict(spec.labels).items()
    assert attrs["Config"]["Labels"][LABEL_SITE] == docker_site
    assert attrs["Config"]["Labels"][LABEL_MANAGED_BY] == MANAGED_BY
    assert attrs["Config"]["User"] == "1000:1000"
    assert attrs["Config"]["WorkingDir"] == f"{CONTAINER_ROOT}/spec-1"
    assert attrs["HostConfig"]["AutoRemove"] is False
    assert attrs["HostConfig"]["Privileged"] is False
    assert list(attrs["NetworkSettings"]["Networks"]) == ["nvflare-network"]


def test_gpu_request_translation(docker_backend, docker_request, docker_client, docker_site, docker_data_root):
    """Created, never started: this machine has no GPUs, but the daemon stores the request."""
    gpu_site = DockerBackend(site=docker_site, config=DockerSiteConfig.from_dict(
        {**docker_backend.config.to_dict(), "default_job_container_kwargs": {"device_requests": [{"Count": -1, "Capabilities": [["gpu"]]}]}}),
        allowed_data_roots=(str(docker_data_root),))
    cases = {"gpu-2": ({"image": IMAGE, "num_of_gpus": 2}, [{"Driver": "", "Count": 2, "DeviceIDs": [],
                                                             "Capabilities": [["gpu"]], "Options": {}}]),
             "gpu-0": ({"image": IMAGE, "num_of_gpus": 0}, None),
             "gpu-site": ({"image": IMAGE}, [{"Driver": "", "Count": -1, "DeviceIDs": [],
                                              "Capabilities": [["gpu"]], "Options": {}}])}
    for job_id, (block, expected) in cases.items():
        spec = gpu_site.prepare(docker_request(job_id=job_id, docker=block))
        os.makedirs(spec.options["mounts"][3]["Source"], exist_ok=True)
        container = docker_client.containers.create(**create_kwargs(spec))
        assert container.attrs["HostConfig"]["DeviceRequests"] == expected, job_id
        assert container.status == "created"


def test_adopting_a_created_container_starts_it(docker_backend, docker_request, docker_client):
    spec = docker_backend.prepare(docker_request(env={"FAKE_SLEEP": "30"}))
    os.makedirs(spec.options["mounts"][3]["Source"], exist_ok=True)
    docker_client.containers.create(**create_kwargs(spec))
    handle = docker_backend.launch(spec)
    _running(docker_backend, handle)


def test_name_taken_by_another_job_is_not_adopted(docker_backend, docker_request, docker_site_containers):
    spec = docker_backend.prepare(docker_request(job_id="taken", env={"FAKE_SLEEP": "30"}))
    docker_backend.launch(spec)
    other = docker_backend.prepare(docker_request(job_id="taken", job_pk="another-pk"))
    with pytest.raises(BackendError, match="belongs to another job"):
        docker_backend.launch(other)
    assert len(docker_site_containers()) == 1


def test_missing_image_is_a_permanent_error_and_leaves_nothing(docker_backend, docker_request, docker_site_containers):
    spec = docker_backend.prepare(docker_request(docker={"image": "launcher-test/not-there:404"}))
    with pytest.raises(BackendError, match=r"image 'launcher-test/not-there:404' not found.*no pull happens") as error:
        docker_backend.launch(spec)
    assert error.value.retryable is False
    assert docker_site_containers() == []


def test_failed_start_removes_the_container(docker_backend, docker_request, docker_site_containers):
    spec = docker_backend.prepare(docker_request(docker={"image": IMAGE, "python_path": "/no/such/python"}))
    with pytest.raises(BackendError):
        docker_backend.launch(spec)
    assert docker_site_containers() == []


def test_missing_network_named_in_error(make_docker_backend, docker_request, docker_client, docker_site_containers):
    docker_backend = make_docker_backend(network=f"no-such-net-{uuid.uuid4().hex[:6]}")
    with pytest.raises(BackendError, match=r"does not exist; create it with `docker network create no-such-net-"):
        docker_backend.launch(docker_backend.prepare(docker_request()))
    assert docker_site_containers() == []


def test_list_managed_sees_this_sites_containers(docker_backend, docker_request):
    running = docker_backend.launch(docker_backend.prepare(docker_request(env={"FAKE_SLEEP": "30"})))
    done = docker_backend.launch(docker_backend.prepare(docker_request(env={"FAKE_EXIT": "3"})))
    _terminal(docker_backend, done)
    _running(docker_backend, running)
    states = {o.ref: (o.state, o.return_code) for o in docker_backend.list_managed()}
    assert states == {running.ref: (JobState.RUNNING, None), done.ref: (JobState.FAILED, 1)}


def test_check_connection_on_a_healthy_site(docker_backend, docker_data_root):
    datasets = [DatasetSpec(study="cancer", name="images", source=str(docker_data_root / "images"), mode="ro"),
                DatasetSpec(study="cancer", name="gone", source=str(docker_data_root / "gone"), mode="ro")]
    results = {r.name: r for r in docker_backend.check_connection(datasets)}
    assert results["docker daemon"].ok and "API" in results["docker daemon"].detail
    assert results["network"].ok and results["workspace"].ok
    assert results["dataset cancer/images"].ok
    assert not results["dataset cancer/gone"].ok and "does not exist" in results["dataset cancer/gone"].detail


def test_unreachable_daemon_is_a_retryable_error(make_docker_backend, docker_request, tmp_path, docker_client):
    socket_path = tmp_path / "nobody-listens.sock"
    docker_backend = make_docker_backend(docker_host=f"unix://{socket_path}")
    spec = docker_backend.prepare(docker_request())  # prepare never needs the daemon
    with pytest.raises(BackendError, match="unreachable") as error:
        docker_backend.launch(spec)
    assert error.value.retryable is True
    with pytest.raises(BackendError) as error:
        docker_backend.inspect(Handle(backend="docker", ref=spec.name))
    assert error.value.retryable is True
    results = {r.name: r for r in docker_backend.check_connection()}
    assert not results["docker daemon"].ok and str(socket_path) in results["docker daemon"].detail
    assert not results["network"].ok
    docker_client.ping()  # the real daemon was never touched


class _DaemonCutOffMidResponse(http.server.BaseHTTPRequestHandler):
    """A Docker API on loopback that goes away in the middle of every logs response, as dockerd
    does when it stops or its connection drops."""

    protocol_version = "HTTP/1.1"

    def do_GET(self):
        if self.path.endswith("/version"):
            self._json({"ApiVersion": "1.41", "Version": "fake", "MinAPIVersion": "1.12"})
        elif "/logs" in self.path:
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.docker.raw-stream")
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"40\r\npartial output")  # promises 64 bytes, sends 14, then hangs up
            self.wfile.flush()
            self.close_connection = True
        else:  # GET /containers/<id>/json
            self._json({"Id": "c0ffee", "Name": "/job", "Config": {"Tty": False, "Labels": {}}, "State": {}})

    def _json(self, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


def test_a_response_cut_off_by_the_daemon_is_a_retryable_error(make_docker_backend):
    # Not a requests ConnectionError but a ChunkedEncodingError: it once escaped a log follower's
    # thread when dockerd's connection dropped.
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _DaemonCutOffMidResponse)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = make_docker_backend(docker_host=f"tcp://127.0.0.1:{server.server_address[1]}")
        with pytest.raises(BackendError, match="unreachable") as error:
            backend.logs(Handle(backend="docker", ref="c0ffee"))
        assert error.value.retryable is True
    finally:
        server.shutdown()
        server.server_close()
