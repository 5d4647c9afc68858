"""DockerBackend.stream(): the events API, as the site watcher consumes it."""

from __future__ import annotations

import os
import queue
import socket
import threading
import time

import pytest

from backends.base import BackendError, JobState
from tests.util import wait_until

pytestmark = pytest.mark.docker


class Collector:
    """Runs backend.stream() in a thread and timestamps every observation on arrival."""

    def __init__(self, backend, **kwargs):
        self.stop = threading.Event()
        self.items: queue.Queue = queue.Queue()
        self.seen: list = []
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(backend, kwargs), daemon=True)
        self.thread.start()

    def _run(self, backend, kwargs):
        try:
            for observation in backend.stream(self.stop, **kwargs):
                self.items.put((time.time(), observation))
        except BaseException as exc:  # reported by the test
            self.error = exc

    def next_for(self, ref, predicate, timeout=10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                arrived, observation = self.items.get(timeout=0.1)
            except queue.Empty:
                continue
            self.seen.append(observation)
            if observation.ref == ref and predicate(observation):
                return arrived, observation
        pytest.fail(f"no matching observation for {ref} within {timeout}s; saw {self.seen}")

    def close(self, timeout=2.0):
        started = time.monotonic()
        self.stop.set()
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "stream() did not return after stop was set"
        return time.monotonic() - started


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
    proxy = CuttableProxy(str(tmp_path / "proxy.sock"), os.path.realpath("/var/run/docker.sock"))
    collector = Collector(make_docker_backend(docker_host=f"unix://{tmp_path / 'proxy.sock'}"))
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
        assert (died.state, died.return_code) == (JobState.ABORTED, 9)
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


class CuttableProxy:
    """A unix-socket proxy in front of the real daemon whose connections the test can cut."""

    def __init__(self, path: str, upstream: str):
        self.upstream = upstream
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.server.bind(path)
        self.server.listen()
        self.sockets: list[socket.socket] = []
        self.sent = bytearray()  # everything clients sent, to see which requests were made
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.upstream)
            self.sockets += [client, upstream]
            for src, dst in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src, dst):
        try:
            while data := src.recv(65536):
                if dst.family == socket.AF_UNIX and src in self.sockets[::2]:
                    self.sent += data
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def cut(self):
        self.server.close()
        for s in self.sockets:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_lost_connection_is_a_retryable_error(make_docker_backend, tmp_path, docker_client):
    proxy = CuttableProxy(str(tmp_path / "proxy.sock"), os.path.realpath("/var/run/docker.sock"))
    collector = Collector(make_docker_backend(docker_host=f"unix://{tmp_path / 'proxy.sock'}"))
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
