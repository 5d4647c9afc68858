"""The backend contract (backends/base.py), one suite for every backend: the real process backend,
the real dockerd and the real Kubernetes client against the loopback API server. No mocks.

Each engine is driven through a small adapter: `spec(job_id, ...)` prepares a job that sleeps or
exits with a code, `play(handle, ...)` makes the loopback server play the kubelet for Kubernetes
(a no-op where a real engine runs the job), `fresh()` builds a new backend object for the same
site (a restarted dashboard), `remove_behind_our_back(handle)` deletes the workload without the
backend. Per-backend suites (test_process.py, test_docker_*.py, test_kubernetes_*.py) keep what is
specific to one engine.
"""

from __future__ import annotations

import inspect
import json
import os
import signal
import time
import uuid
from dataclasses import replace

import pytest

from backends import backend_class
from backends.base import Backend, BackendError, Handle, InvalidJobSpec, JobRequest, JobState, ReturnCode, StillRunning
from backends.process import ProcessBackend, ProcessSiteConfig
from tests import kube_api_server as kube
from tests.backends.kube_fixtures import clock, kube_server, make_backend  # noqa: F401 - fixtures
from tests.backends.kube_fixtures import job_request as kube_job_request
from tests.conftest import client_job_args, process_settings
from tests.util import StreamCollector, wait_until

ENGINES = [pytest.param("process", marks=pytest.mark.embedded), pytest.param("docker", marks=pytest.mark.docker),
           pytest.param("kubernetes", marks=pytest.mark.kubernetes)]


class Engine:
    """What every adapter shares: a spec is the backend's prepare() of the adapter's request."""

    def spec(self, job_id: str, **request):
        return self.backend.prepare(self.request(job_id, **request))


class ProcessEngine(Engine):
    kind = "process"
    # NVFlare's mapping for a local process: 0 -> 0, 9 -> 9 (aborted), anything else -> 1
    outcomes = {0: (JobState.SUCCEEDED, 0), 1: (JobState.FAILED, 1), 9: (JobState.ABORTED, 9)}
    replays_from_since_only = True

    def __init__(self, workspace):
        self.workspace = workspace
        self.backend = self.fresh()

    def fresh(self) -> ProcessBackend:
        return ProcessBackend(site="site-1", config=ProcessSiteConfig.from_dict(process_settings(self.workspace)))

    def request(self, job_id: str, *, sleep: float = 0, exit_code: int = 0, command=None) -> JobRequest:
        options = [f"sleep={sleep}", f"exit={exit_code}"]
        return JobRequest(site="site-1", job_pk="7", job_id=job_id, command=command,
                          job_args=client_job_args(job_id), set_options=tuple(options))

    def play(self, handle: Handle, status: str, exit_code: int = 0) -> None:
        """A real process plays itself."""

    def told_to_run(self, handle: Handle) -> list[str] | None:
        """No engine record of the argv here: the output says what ran (see the override test)."""
        return None

    def nvflare_ran(self, handle: Handle, spec) -> bool:
        """The fake NVFlare job module records itself in its job directory."""
        return os.path.exists(os.path.join(spec.workdir, "job_record.json"))

    def remove_behind_our_back(self, handle: Handle) -> None:
        """Kill the job and let its runner record that, then delete its record: as a cleanup by hand."""
        state_path = os.path.join(self.backend.state_dir, handle.ref + ".json")
        with open(state_path) as f:
            os.killpg(json.load(f)["pid"], signal.SIGKILL)
        wait_until(lambda: _read_json(state_path).get("exit_code") is not None, message="the kill recorded")
        for suffix in (".json", ".log"):
            os.unlink(os.path.join(self.backend.state_dir, handle.ref + suffix))


def _read_json(path: str) -> dict:
    with open(path) as f:
        return json.load(f)


class DockerEngine(Engine):
    kind = "docker"
    outcomes = {0: (JobState.SUCCEEDED, 0), 1: (JobState.FAILED, 1), 9: (JobState.ABORTED, 9)}
    replays_from_since_only = True

    def __init__(self, make_docker_backend, docker_request, docker_client):
        self.make, self.make_request, self.client = make_docker_backend, docker_request, docker_client
        self.backend = self.fresh()

    def fresh(self):
        return self.make()

    def request(self, job_id: str, *, sleep: float = 0, exit_code: int = 0, command=None) -> JobRequest:
        env = {"FAKE_SLEEP": str(sleep), "FAKE_EXIT": str(exit_code), "SITE_DEFAULT": "yes"}
        return self.make_request(job_id=job_id, job_pk="7", env=env, command=command)

    def play(self, handle: Handle, status: str, exit_code: int = 0) -> None:
        """The real daemon runs the container."""

    def told_to_run(self, handle: Handle) -> list[str] | None:
        config = self.client.containers.get(handle.ref).attrs["Config"]
        return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]

    def nvflare_ran(self, handle: Handle, spec) -> bool:
        """The image's stand-in python announces itself on its first line."""
        return "FAKE-PYTHON" in self.backend.logs(handle)

    def remove_behind_our_back(self, handle: Handle) -> None:
        self.client.containers.get(handle.ref).remove(force=True)


class KubernetesEngine(Engine):
    kind = "kubernetes"
    # NVFlare on Kubernetes (launch-semantics.md §4.9): a Failed pod is 9 unless its code is 101-103.
    outcomes = {0: (JobState.SUCCEEDED, 0), 1: (JobState.FAILED, 9), 9: (JobState.FAILED, 9)}
    replays_from_since_only = False  # a stream starts with a list of every pod: a snapshot covers `since`

    def __init__(self, kube_server, make_backend):
        self.server, self.make = kube_server, make_backend
        self.backend = self.fresh()

    def fresh(self):
        return self.make()

    def request(self, job_id: str, *, sleep: float = 0, exit_code: int = 0, command=None) -> JobRequest:
        return kube_job_request(job_id=job_id, job_pk="7", command=command)

    def told_to_run(self, handle: Handle) -> list[str] | None:
        main = self.server.pod(handle.ref)["spec"]["containers"][0]
        return [*main["command"], *main["args"]]

    def nvflare_ran(self, handle: Handle, spec) -> bool:
        """Nothing runs here (the test plays the kubelet): the pod as created is all there is."""
        return False

    def play(self, handle: Handle, status: str, exit_code: int = 0) -> None:
        """The test is the kubelet here: it writes the pod's status."""
        self.server.set_status(handle.ref, {"running": kube.running(),
                                            "exited": kube.succeeded() if exit_code == 0 else kube.failed(exit_code),
                                            }[status])

    def remove_behind_our_back(self, handle: Handle) -> None:
        with self.server.cond:
            del self.server.store["pods"][("default", handle.ref)]


@pytest.fixture(params=ENGINES)
def engine(request):
    if request.param == "process":
        return ProcessEngine(request.getfixturevalue("workspace"))
    if request.param == "docker":
        request.getfixturevalue("docker_backend")  # removes the site's containers afterwards (logs on failure)
        return DockerEngine(request.getfixturevalue("make_docker_backend"), request.getfixturevalue("docker_request"),
                            request.getfixturevalue("docker_client"))
    return KubernetesEngine(request.getfixturevalue("kube_server"), request.getfixturevalue("make_backend"))


@pytest.mark.parametrize("kind", ["process", "docker", "kubernetes"])
def test_every_backend_takes_exactly_the_contracts_arguments(kind):
    """What the jobs app calls is declared once (backends/base.py); no backend widens or narrows it,
    so callers never need to ask which backend they hold."""
    cls = backend_class(kind)
    for name in sorted(Backend.__abstractmethods__):
        declared = inspect.signature(getattr(Backend, name)).parameters
        implemented = inspect.signature(getattr(cls, name)).parameters
        assert [(p.name, p.kind, p.default) for p in implemented.values()] == [
            (p.name, p.kind, p.default) for p in declared.values()], f"{kind}.{name}"


def job_id() -> str:
    return f"c-{uuid.uuid4().hex[:10]}"


def running(engine, *, backend=None):
    """A long job, launched and seen running."""
    backend = backend or engine.backend
    handle = backend.launch(engine.spec(job_id(), sleep=60))
    engine.play(handle, "running")
    wait_until(lambda: backend.inspect(handle).state is JobState.RUNNING, timeout=15, message="running")
    return handle


def ended(engine, handle):
    return wait_until(lambda: (o := engine.backend.inspect(handle)).state.is_terminal and o, timeout=15,
                      message=f"{handle.ref} to end")


def test_launch_twice_adopts_the_first_workload(engine):
    spec = engine.spec(job_id(), sleep=60)
    first, second = engine.backend.launch(spec), engine.backend.launch(spec)
    assert first == second == Handle(engine.kind, spec.name)
    assert [o.ref for o in engine.backend.list_managed()] == [spec.name]  # one workload, nothing else
    engine.backend.terminate(first)


@pytest.mark.parametrize("code", [0, 1, 9])
def test_exit_codes_map_to_nvflare_return_codes(engine, code):
    handle = engine.backend.launch(engine.spec(job_id(), exit_code=code))
    engine.play(handle, "exited", code)
    observation = ended(engine, handle)
    assert (observation.state, observation.return_code) == engine.outcomes[code]
    assert observation.exit_code == code
    assert observation.job_pk == "7"
    assert observation.logs_tail is not None


def test_terminate_twice_is_aborted_both_times(engine):
    handle = running(engine)
    first = engine.backend.terminate(handle)
    assert (first.state, first.return_code) == (JobState.ABORTED, ReturnCode.ABORTED)
    second = engine.backend.terminate(handle)
    assert (second.state, second.return_code) == (JobState.ABORTED, ReturnCode.ABORTED)
    # The job row knows terminate was requested (Job.terminate_requested_at) and says so.
    later = engine.backend.inspect(handle, terminate_requested=True)
    assert (later.state, later.return_code) == (JobState.ABORTED, ReturnCode.ABORTED)


def test_terminate_before_the_workload_exists(engine):
    spec = engine.spec(job_id())
    observation = engine.backend.terminate(Handle(engine.kind, spec.name))
    assert (observation.state, observation.return_code) == (JobState.ABORTED, ReturnCode.ABORTED)
    assert engine.backend.inspect(Handle(engine.kind, spec.name)).state is JobState.LOST


def test_terminate_a_vanished_workload(engine):
    handle = running(engine)
    engine.remove_behind_our_back(handle)
    observation = engine.backend.terminate(handle)
    assert (observation.state, observation.return_code) == (JobState.ABORTED, ReturnCode.ABORTED)


def test_inspect_a_vanished_workload(engine):
    handle = running(engine)
    engine.remove_behind_our_back(handle)
    observation = engine.backend.inspect(handle)
    assert (observation.state, observation.reason) == (JobState.LOST, "vanished")
    assert engine.backend.inspect(handle, terminate_requested=True).state is JobState.ABORTED
    assert engine.backend.logs(handle) == ""


def test_cleanup_refuses_a_running_workload_and_removes_an_ended_one(engine):
    handle = running(engine)
    with pytest.raises(StillRunning) as error:
        engine.backend.cleanup(handle)
    assert error.value.retryable is False and isinstance(error.value, BackendError)
    assert engine.backend.inspect(handle).state is JobState.RUNNING  # untouched
    engine.backend.terminate(handle)
    engine.backend.cleanup(handle)
    engine.backend.cleanup(handle)  # missing is fine
    assert (engine.backend.inspect(handle).state, engine.backend.inspect(handle).reason) == (JobState.LOST, "vanished")
    assert handle.ref not in [o.ref for o in engine.backend.list_managed()]


def test_a_new_backend_object_adopts_what_the_old_one_launched(engine):
    spec = engine.spec(job_id(), sleep=60)
    handle = engine.backend.launch(spec)
    engine.play(handle, "running")
    restarted = engine.fresh()  # a dashboard restart: nothing is carried over but the site's settings
    assert restarted.launch(spec) == handle
    assert wait_until(lambda: restarted.inspect(handle).state is JobState.RUNNING, timeout=15)
    assert [(o.ref, o.job_pk) for o in restarted.list_managed() if o.ref == handle.ref] == [(handle.ref, "7")]
    assert restarted.terminate(handle).return_code == ReturnCode.ABORTED


def test_stream_resumes_from_since(engine):
    before = engine.backend.launch(engine.spec(job_id()))
    engine.play(before, "exited", 0)
    ended(engine, before)
    since = int(time.time()) + 1
    wait_until(lambda: time.time() >= since, timeout=3)  # a whole second later: `since` is in seconds
    after = engine.backend.launch(engine.spec(job_id(), exit_code=1))
    engine.play(after, "exited", 1)
    ended(engine, after)
    stream = StreamCollector(engine.fresh(), since=since)  # a new object too: the position is the caller's
    try:
        _, seen = stream.next_for(after.ref, lambda o: o.state.is_terminal)
        assert (seen.state, seen.return_code) == engine.outcomes[1]
    finally:
        stream.close()
    assert stream.error is None
    if engine.replays_from_since_only:
        assert before.ref not in [o.ref for o in stream.seen]


def test_check_connection_takes_datasets_everywhere(engine):
    """One signature: the jobs app passes the site's datasets to every backend (no branching on the
    kind); each checks what it can see of them (Kubernetes: PVC claims, not readable here)."""
    results = engine.backend.check_connection(datasets=())
    assert results and all(r.ok for r in results), results
    assert engine.backend.check_connection(()) == results


# The site probe's kind of command: a shell line, with the job's env (SITE_DEFAULT is a site/study
# variable on every engine here), not NVFlare's `python -u -m <module> <flags>`.
OVERRIDE = ("sh", "-c", 'echo "OVERRIDE-RAN SITE_DEFAULT=$SITE_DEFAULT"')


def test_a_command_override_runs_that_command_and_nothing_of_nvflares(engine):
    """JobRequest.command (the launcher's own site probe) replaces the whole argv on every backend,
    with the job's image, user, env and mounts kept; the job args are still validated as usual."""
    spec = engine.spec(job_id(), command=OVERRIDE)
    assert spec.command == OVERRIDE
    handle = engine.backend.launch(spec)
    told = engine.told_to_run(handle)
    assert told is None if engine.kind == "process" else told == list(OVERRIDE)
    engine.play(handle, "exited", 0)
    observation = ended(engine, handle)
    assert (observation.state, observation.return_code) == engine.outcomes[0]
    assert not engine.nvflare_ran(handle, spec)
    if engine.kind != "kubernetes":  # a real engine ran it: its output says what ran, with the job's env
        assert "OVERRIDE-RAN SITE_DEFAULT=yes" in engine.backend.logs(handle)
    normal = engine.spec(job_id())
    assert normal.command[0] != "sh" and "-m" in normal.command  # without the override: NVFlare's command


@pytest.mark.parametrize("command, field", [((), "command"), (("",), "command"), (("sh", "a\0b"), "command"),
                                            ("sh -c id", "command")])
def test_a_malformed_command_override_is_refused(engine, command, field):
    with pytest.raises(InvalidJobSpec) as error:
        engine.spec(job_id(), command=command)
    assert error.value.field == field


def test_a_command_override_does_not_skip_the_job_arg_checks(engine):
    spec = engine.spec(job_id(), command=OVERRIDE)  # valid args: fine
    assert spec.command == OVERRIDE
    request = engine.request(job_id(), command=OVERRIDE)
    for bad in ({"exe_module": ["-c", "import os"]}, {"client_name": ["-c", "--help"]}):
        with pytest.raises(InvalidJobSpec) as error:
            engine.backend.prepare(replace(request, job_args={**request.job_args, **bad}))
        assert error.value.field.startswith("job_args."), error.value.field
