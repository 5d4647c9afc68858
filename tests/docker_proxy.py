"""A proxy in front of the real Docker socket whose connections a test can cut, for the tests of what
a client does when the daemon goes away (tests/backends/test_docker_stream.py, tests/live/
test_docker_watch.py). Loopback only: a unix socket in the test's tmp dir, or 127.0.0.1."""

from __future__ import annotations

import os
import random
import socket
import threading

DOCKER_SOCKET = "/var/run/docker.sock"


class DockerProxy:
    """Listens on the unix socket `path` (or, without one, on TCP 127.0.0.1:`port`) and forwards each
    connection to the Docker socket. cut() drops every connection and refuses new ones (what a
    daemon restart looks like to a client); restore() listens again at the same address. `sent` is
    everything clients sent, to see which requests were made."""

    def __init__(self, path: str | None = None, upstream: str = DOCKER_SOCKET):
        self.path = path
        self.port = None if path else _stable_port()
        self.upstream = os.path.realpath(upstream)
        self.sent = bytearray()
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.server: socket.socket | None = None

    @property
    def url(self) -> str:
        """The docker_host a client is given."""
        return f"unix://{self.path}" if self.path else f"tcp://127.0.0.1:{self.port}"

    def restore(self) -> DockerProxy:
        if self.path:
            if os.path.exists(self.path):
                os.unlink(self.path)
            server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            server.bind(self.path)
        else:
            server = socket.socket()
            server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            server.bind(("127.0.0.1", self.port))
        server.listen(64)
        self.server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()
        return self

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.upstream)
            with self.lock:
                self.conns |= {client, upstream}
            threading.Thread(target=self._pump, args=(client, upstream, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client:
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

    def cut(self) -> None:
        if self.server is not None:
            try:  # wakes the thread blocked in accept(); close() alone would leave the port listening
                self.server.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self.server.close()
        with self.lock:
            conns, self.conns = self.conns, set()
        for s in conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def _stable_port() -> int:
    """A free port below the ephemeral range: while the proxy is cut, a client connecting to an
    ephemeral-range port can be given that very port as its source and connect to itself,
    which would then keep the port taken."""
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
        low = int(f.read().split()[0])
    for _ in range(100):
        port = random.randint(max(1024, low - 12000), low - 1)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
