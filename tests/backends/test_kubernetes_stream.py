"""KubernetesBackend.stream(): pod watch with resume, relist on 410, Warning events, stop."""

from __future__ import annotations

import threading
import time

import pytest

from backends.base import BackendError, JobState
from tests import kube_api_server as kube
from tests.backends.kube_fixtures import (  # noqa: F401 - fixtures
    backend, clock, job_request, kube_server, make_backend,
)
from tests.util import StreamCollector, wait_until


Consumer = StreamCollector


@pytest.fixture
def launched(kube_server, backend):
    spec = backend.prepare(job_request())
    backend.launch(spec)
    return spec.name


@pytest.fixture
def consumer(backend):
    c = Consumer(backend)
    yield c
    c.close()


def test_stream_reports_state_changes(kube_server, launched, consumer):
    consumer.next_matching(lambda o: o.ref == launched and o.state == JobState.STARTING)
    kube_server.wait_for_watches(2)
    kube_server.set_status(launched, kube.running())
    consumer.next_matching(lambda o: o.state == JobState.RUNNING)
    kube_server.set_logs(launched, "done\n")
    kube_server.set_status(launched, kube.failed(102))
    obs = consumer.next_matching(lambda o: o.state.is_terminal)
    assert (obs.return_code, obs.logs_tail, obs.job_pk) == (102, "done\n", "42")


def test_stream_resumes_after_a_dropped_watch_from_the_last_resource_version(kube_server, launched, consumer):
    consumer.next_matching(lambda o: o.ref == launched)
    kube_server.wait_for_watches(2)
    kube_server.set_status(launched, kube.running())
    running = consumer.next_matching(lambda o: o.state == JobState.RUNNING)
    last_rv = kube_server.pod(launched)["metadata"]["resourceVersion"]
    lists_before = kube_server.count("GET", "/pods", watch=False)
    kube_server.drop_watches()
    wait_until(lambda: any(q.get("resourceVersion") == [last_rv] for m, p, q in kube_server.requests
                           if p.endswith("/pods") and q.get("watch") == ["true"]), timeout=5)
    kube_server.wait_for_watches(2)
    kube_server.set_status(launched, kube.succeeded())
    assert consumer.next_matching(lambda o: o.state == JobState.SUCCEEDED).return_code == 0
    assert kube_server.count("GET", "/pods", watch=False) == lists_before  # resumed, no relist
    assert running.ref == launched


def test_stream_relists_on_410_gone(kube_server, launched, consumer):
    consumer.next_matching(lambda o: o.ref == launched)
    kube_server.wait_for_watches(2)
    lists_before = kube_server.count("GET", "/pods", watch=False)
    # The change happens while the watch is expiring: only a relist can deliver it.
    kube_server.expire_watches(then=lambda: kube_server.set_status(launched, kube.running()))
    consumer.next_matching(lambda o: o.state == JobState.RUNNING)
    assert kube_server.count("GET", "/pods", watch=False) > lists_before
    kube_server.wait_for_watches(2)
    kube_server.set_status(launched, kube.succeeded())
    consumer.next_matching(lambda o: o.state == JobState.SUCCEEDED)


def test_warning_events_become_event_observations(kube_server, launched, consumer, backend):
    consumer.next_matching(lambda o: o.ref == launched)
    kube_server.wait_for_watches(2)
    kube_server.add_event(launched, "FailedScheduling", "0/1 nodes are available: 1 Insufficient cpu.")
    kube_server.add_event(launched, "Pulled", "normal event", type="Normal")
    kube_server.add_event("someone-elses-pod", "BackOff", "not ours")
    obs = consumer.next_matching(lambda o: o.kind == "event")
    assert (obs.ref, obs.reason, obs.state, obs.job_pk) == (launched, "FailedScheduling", JobState.STARTING, "42")
    assert "Insufficient cpu" in obs.message and obs.at and obs.event_id
    kube_server.add_event(launched, "BackOff", "Back-off pulling image")
    assert consumer.next_matching(lambda o: o.kind == "event").reason == "BackOff"


def test_stream_applies_pending_rules(kube_server, launched, consumer):
    consumer.next_matching(lambda o: o.ref == launched)
    kube_server.wait_for_watches(2)
    kube_server.set_status(launched, kube.waiting("ImagePullBackOff", "Back-off pulling image"))
    obs = consumer.next_matching(lambda o: o.kind == "state" and o.state.is_terminal)
    assert (obs.return_code, obs.reason) == (101, "ImagePullBackOff")
    assert kube_server.pod(launched) is None


def test_pending_timeout_fires_while_the_watch_is_quiet(kube_server, make_backend, clock):
    backend = make_backend(pending_timeout=30)
    spec = backend.prepare(job_request())
    backend.launch(spec)
    kube_server.set_status(spec.name, kube.unscheduled("1 Insufficient cpu"))
    consumer = Consumer(backend)
    try:
        consumer.next_matching(lambda o: o.state == JobState.STARTING)
        clock.advance(30)
        obs = consumer.next_matching(lambda o: o.state.is_terminal)
        assert obs.return_code == 101
    finally:
        consumer.close()


def test_stop_is_honoured_quickly_and_watches_restart_when_silent(kube_server, backend):
    consumer = Consumer(backend)
    kube_server.wait_for_watches(2)
    # Nothing happens: the server-side timeout (2 s in tests) ends the watch and it is restarted.
    wait_until(lambda: kube_server.count("GET", "/pods", watch=True) >= 2, timeout=5)
    started = time.monotonic()
    consumer.close()
    assert time.monotonic() - started < 2
    assert consumer.error is None


def test_stream_raises_retryable_when_the_api_is_unreachable(kube_server, backend):
    kube_server.stop()
    with pytest.raises(BackendError) as err:
        for _ in backend.stream(threading.Event()):
            pass
    assert err.value.retryable


def test_stream_raises_when_the_api_goes_away(kube_server, launched, backend):
    consumer = Consumer(backend)
    consumer.next_matching(lambda o: o.ref == launched)
    kube_server.wait_for_watches(2)
    kube_server.stop()
    wait_until(lambda: consumer.error is not None, timeout=5)
    assert isinstance(consumer.error, BackendError) and consumer.error.retryable
    consumer.close()
