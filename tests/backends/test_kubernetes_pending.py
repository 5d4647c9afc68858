"""§4.8 pending-pod classification, driven through the loopback server and a hand-moved clock."""

from __future__ import annotations

import pytest

from backends.base import JobState
from backends.kubernetes.pending import classify_pending, is_shortage
from tests import kube_api_server as kube
from tests.backends.kube_fixtures import (  # noqa: F401 - fixtures
    backend, clock, job_request, kube_server, make_backend,
)


def launch(backend, **k8s):
    spec = backend.prepare(job_request(k8s=k8s or None))
    return spec.name, backend.launch(spec)


def assert_failed_and_deleted(kube_server, name, obs, reason):
    assert (obs.state, obs.return_code, obs.reason) == (JobState.FAILED, 101, reason)
    assert reason in obs.message
    assert kube_server.pod(name) is None
    assert ("pods", name, 0) in kube_server.deletions
    assert kube_server.secret(f"nvflare-cred-{name}") is None


@pytest.mark.parametrize("reason", ["ErrImagePull", "ImagePullBackOff", "CrashLoopBackOff", "InvalidImageName",
                                    "CreateContainerConfigError", "ErrImageNeverPull", "RunContainerError",
                                    "CreateContainerError"])
def test_fail_fast_waiting_reasons(kube_server, backend, reason):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.waiting(reason, f"details of {reason}"))
    obs = backend.inspect(handle)
    assert_failed_and_deleted(kube_server, name, obs, reason)
    assert f"details of {reason}" in obs.message
    # The pod is gone now; the job row keeps this verdict (terminal states are sticky there).
    assert (backend.inspect(handle).state, backend.inspect(handle).reason) == (JobState.LOST, "vanished")


def test_container_creating_waits(kube_server, backend):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.waiting("ContainerCreating"))
    obs = backend.inspect(handle)
    assert (obs.state, obs.reason) == (JobState.STARTING, "ContainerCreating")
    assert kube_server.pod(name) is not None


def test_scripted_pull_failure_sequence(kube_server, backend):
    name, handle = launch(backend)
    kube_server.script(name, [kube.waiting("ContainerCreating"), kube.waiting("ErrImagePull", "not found")])
    assert backend.inspect(handle).state == JobState.STARTING
    kube_server.advance(name)
    assert_failed_and_deleted(kube_server, name, backend.inspect(handle), "ErrImagePull")


def test_scripted_success_sequence(kube_server, backend):
    name, handle = launch(backend)
    kube_server.script(name, [kube.pending(), kube.running(), kube.succeeded()])
    states = [backend.inspect(handle).state]
    for _ in range(2):
        kube_server.advance(name)
        states.append(backend.inspect(handle).state)
    assert states == [JobState.STARTING, JobState.RUNNING, JobState.SUCCEEDED]


@pytest.mark.parametrize("reason", ["FailedMount", "FailedCreatePodSandBox", "BackOff", "FailedAttachVolume"])
def test_recent_warning_event_fails_a_scheduled_pod(kube_server, backend, reason):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.waiting("ContainerCreating"))
    kube_server.add_event(name, reason, "MountVolume.SetUp failed for volume", age=5)
    assert_failed_and_deleted(kube_server, name, backend.inspect(handle), reason)


def test_old_or_untimed_or_normal_events_do_not_fail_a_scheduled_pod(kube_server, backend):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.waiting("ContainerCreating"))
    kube_server.add_event(name, "FailedMount", "old", age=120)
    kube_server.add_event(name, "FailedMount", "no time", timestamps=False)
    kube_server.add_event(name, "Pulling", "pulling image", type="Normal", age=1)
    kube_server.add_event(name, "SomethingElse", "not in the list", age=1)
    assert backend.inspect(handle).state == JobState.STARTING
    assert kube_server.pod(name) is not None


def test_insufficient_cpu_waits_then_fails_at_pending_timeout(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=120)
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("0/1 nodes are available: 1 Insufficient cpu."))
    first = backend.inspect(handle)
    assert first.state == JobState.STARTING and "Insufficient cpu" in first.message
    clock.advance(119)
    assert backend.inspect(handle).state == JobState.STARTING
    clock.advance(1)
    obs = backend.inspect(handle)
    assert_failed_and_deleted(kube_server, name, obs, "Unschedulable")
    assert "Insufficient cpu" in obs.message and "pending_timeout 120s" in obs.message


def test_pending_timeout_counts_from_the_pod_and_survives_a_restart(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=120)
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("0/1 nodes are available: 1 Insufficient cpu."))
    assert backend.inspect(handle).state == JobState.STARTING
    clock.advance(100)
    restarted = make_backend(pending_timeout=120)  # a new process: nothing but the pod remembers
    assert restarted.inspect(handle).state == JobState.STARTING
    clock.advance(20)
    obs = restarted.inspect(handle)
    assert_failed_and_deleted(kube_server, name, obs, "Unschedulable")
    assert "no resources after 120s" in obs.message


def test_site_start_timeout_survives_a_restart(kube_server, make_backend, clock):
    name, handle = launch(make_backend(timeout=300))
    kube_server.set_status(name, kube.waiting("ContainerCreating"))
    clock.advance(300)
    assert_failed_and_deleted(kube_server, name, make_backend(timeout=300).inspect(handle), "StartTimeout")


def test_job_may_shorten_the_pending_timeout(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=120)
    name, handle = launch(backend, pending_timeout=10)
    kube_server.set_status(name, kube.unscheduled("0/3 nodes are available: 3 Insufficient nvidia.com/gpu."))
    assert backend.inspect(handle).state == JobState.STARTING
    clock.advance(10)
    assert backend.inspect(handle).return_code == 101


def test_pending_timeout_zero_fails_at_once_and_none_waits_forever(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=0)
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("1 Insufficient memory"))
    assert backend.inspect(handle).return_code == 101
    forever = make_backend(pending_timeout=None)
    name, handle = launch(forever, pending_timeout=None)
    kube_server.set_status(name, kube.unscheduled("1 Insufficient memory"))
    clock.advance(10**6)
    assert forever.inspect(handle).state == JobState.STARTING


def test_any_other_observation_resets_the_timer(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=60)
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("1 Insufficient cpu"))
    backend.inspect(handle)
    clock.advance(50)
    kube_server.set_status(name, kube.pending())
    backend.inspect(handle)  # no verdict: the timer is dropped
    kube_server.set_status(name, kube.unscheduled("1 Insufficient cpu"))
    backend.inspect(handle)
    clock.advance(50)
    assert backend.inspect(handle).state == JobState.STARTING


def test_unreadable_pod_pauses_the_timer(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=60)
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("1 Insufficient cpu"))
    backend.inspect(handle)
    clock.advance(30)
    kube_server.denied.add(("get", "pods"))
    with pytest.raises(Exception):
        backend.inspect(handle)
    clock.advance(1000)  # paused: not counted
    kube_server.denied.clear()
    assert backend.inspect(handle).state == JobState.STARTING
    clock.advance(30)
    assert backend.inspect(handle).return_code == 101


def test_plain_unschedulable_fails_at_once(kube_server, backend):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("0/1 nodes are available: 1 node(s) had untolerated taint."))
    assert_failed_and_deleted(kube_server, name, backend.inspect(handle), "Unschedulable")


def test_insufficient_ephemeral_storage_is_not_a_shortage(kube_server, backend):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("0/1 nodes are available: 1 Insufficient ephemeral-storage."))
    assert backend.inspect(handle).return_code == 101


def test_unscheduled_pod_is_judged_by_its_newest_warning_event(kube_server, backend, clock):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unscheduled("waiting", reason="SchedulerBusy"))
    kube_server.add_event(name, "FailedScheduling", "0/1 nodes: 1 Insufficient cpu.", age=30)
    kube_server.add_event(name, "Irrelevant", "skipped", age=1)
    assert backend.inspect(handle).state == JobState.STARTING  # the shortage event decides: wait
    kube_server.add_event(name, "FailedScheduling", "0/1 nodes: node affinity mismatch", age=0)
    assert_failed_and_deleted(kube_server, name, backend.inspect(handle), "FailedScheduling")


def test_events_unreadable_pauses_an_unscheduled_pod(kube_server, backend):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.pending())
    kube_server.denied.add(("list", "events"))
    assert backend.inspect(handle).state == JobState.STARTING


def test_unknown_phase_fails(kube_server, backend):
    name, handle = launch(backend)
    kube_server.set_status(name, kube.unknown())
    assert_failed_and_deleted(kube_server, name, backend.inspect(handle), "Unknown")


def test_site_start_timeout(kube_server, make_backend, clock):
    backend = make_backend(timeout=300)
    name, handle = launch(backend)
    kube_server.set_status(name, kube.waiting("ContainerCreating"))
    clock.advance(299)
    assert backend.inspect(handle).state == JobState.STARTING
    clock.advance(1)
    assert_failed_and_deleted(kube_server, name, backend.inspect(handle), "StartTimeout")


@pytest.mark.parametrize("text,expected", [
    ("0/1 nodes are available: 1 Insufficient cpu.", True), ("Insufficient memory,", True),
    ("insufficient amd.com/gpu", True), ("1 Insufficient nvidia.com/gpu;", True),
    ("1 Insufficient pods", False), ("Insufficient ephemeral-storage", False), ("no shortage", False),
])
def test_shortage_text(text, expected):
    assert is_shortage(text) is expected


def test_classify_does_not_read_events_when_the_status_decides():
    def boom():
        raise AssertionError("events read")

    pod = {"status": kube.waiting("ErrImagePull"), "spec": {"nodeName": "n"}}
    assert classify_pending(pod, boom, 0).action == "fail"
    assert classify_pending({"status": kube.unscheduled("1 Insufficient cpu")}, boom, 0).action == "wait_resources"
    assert classify_pending({"status": {"phase": "Running"}}, boom, 0).action == "wait"
