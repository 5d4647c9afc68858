"""DockerBackend.stream(): the events API, as the site watcher consumes it."""

from __future__ import annotations

import threading
import time

import pytest

from backends.base import BackendError, JobState, terminated_outcome
from tests.docker_proxy import DockerProxy
from tests.util import StreamCollector, wait_until

pytestmark = pytest.mark.docker


Collector = StreamCollector


def test_exit_is_delivered_within_a_second(docker_backend, docker_request):
    collector = Collector(docker_backend, since=int(time.time()) - 1)
    try:
        spec = docker_backend.prepare(docker_request(env={"FAKE_SLEEP": "0.5", "FAKE_EXIT": "3"}))
        handle = docker_backend.launch(spec)
        collector.next_for(handle.ref, lambda o: o.state == JobState.STARTING)
        collector.next_for(handle.ref, lambda o: o.state == JobState.RUNNING)
        arrived, died = collector.next_for(handle.ref, lambda o: o.state.is_terminal)
        assert (died.state, died.return_code, died.exit_code, died.job_pk) == (JobState.FAILED, 1, 3, spec.job_pk)
        assert arrived - died.at < 1.0, f"exit reached the stream {arrived - died.at:.3f}s after it happened"
        assert died.logs_tail is None  # read by the recorder (logs()), not on the stream's thread
        assert "FAKE-PYTHON ARGV" in docker_backend.logs(handle)

        docker_backend.cleanup(handle)
        _, destroyed = collector.next_for(handle.ref, lambda o: o.state == JobState.LOST)
        assert destroyed.reason == "vanished"
    finally:
        assert collector.close() < 1.5
    assert collector.error is None


def test_idle_stream_returns_promptly_on_stop(make_docker_backend, docker_client, tmp_path):
    proxy = DockerProxy(str(tmp_path / "proxy.sock")).restore()
    collector = Collector(make_docker_backend(docker_host=proxy.url))
    wait_until(lambda: b"/events" in proxy.sent)  # blocked on a quiet connection now
    assert collector.close() < 1.5
    assert collector.error is None
    proxy.cut()


def test_terminated_job_is_aborted_on_the_stream(docker_backend, docker_request):
    collector = Collector(docker_backend, since=int(time.time()) - 1)
    try:
        handle = docker_backend.launch(docker_backend.prepare(docker_request(env={"FAKE_SLEEP": "60"})))
        collector.next_for(handle.ref, lambda o: o.state == JobState.RUNNING)
        docker_backend.terminate(handle)
        _, died = collector.next_for(handle.ref, lambda o: o.state.is_terminal)
        # The stream reports what the daemon saw (killed: 137). That the launcher asked for it is
        # the job row's to know (terminate_requested_at): with it, the exit reads as aborted (9),
        # the rule the jobs app applies when it records the exit (test_lifecycle.py).
        assert died.exit_code == 137
        aborted = terminated_outcome(died)
        assert (aborted.state, aborted.return_code) == (JobState.ABORTED, 9)
    finally:
        collector.close()


def test_resumed_stream_skips_replayed_events(docker_backend, docker_request):
    first = Collector(docker_backend, since=int(time.time()) - 1)
    a = docker_backend.launch(docker_backend.prepare(docker_request(job_id="resume-a")))
    first.next_for(a.ref, lambda o: o.state.is_terminal)
    first.close()

    # Resumes from the second of the last event it saw, so the daemon sends a's die again: dropped.
    second = Collector(docker_backend)
    try:
        b = docker_backend.launch(docker_backend.prepare(docker_request(job_id="resume-b")))
        second.next_for(b.ref, lambda o: o.state.is_terminal)
    finally:
        second.close()
    ids = [o.event_id for o in first.seen + second.seen]
    assert len(ids) == len(set(ids))
    assert not any(o.ref == a.ref for o in second.seen)


def test_lost_connection_is_a_retryable_error(make_docker_backend, tmp_path, docker_client):
    proxy = DockerProxy(str(tmp_path / "proxy.sock")).restore()
    collector = Collector(make_docker_backend(docker_host=proxy.url))
    wait_until(lambda: b"/events" in proxy.sent)
    proxy.cut()
    collector.thread.join(5)
    assert not collector.thread.is_alive()
    assert isinstance(collector.error, BackendError) and collector.error.retryable is True


def test_stream_on_unreachable_daemon_is_a_retryable_error(make_docker_backend, tmp_path):
    docker_backend = make_docker_backend(docker_host=f"unix://{tmp_path / 'nobody.sock'}")
    with pytest.raises(BackendError) as error:
        next(docker_backend.stream(threading.Event()))
    assert error.value.retryable is True
