"""A counting proxy for the Docker socket, for bench/propagation_docker.py (which starts two, as child
processes): it listens on a unix socket and forwards bytes to /var/run/docker.sock, parsing each
client connection's HTTP requests and counting them by route and by the client's pid (SO_PEERCRED).

    python bench/docker_api_proxy.py LISTEN STATS [--log]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

DOCKER_SOCKET = "/var/run/docker.sock"


def api_route(method: str, target: str) -> str:
    """'GET /v1.41/containers/abc/json?x' -> 'GET containers/{id}/json' (one key per kind of call)."""
    path = re.sub(r"^/v[0-9.]+", "", target.split("?", 1)[0]).strip("/")
    parts = path.split("/")
    if parts[0] == "containers" and len(parts) >= 2 and parts[1] not in ("create", "json", "prune"):
        parts[1] = "{id}"
    elif parts[0] in ("networks", "volumes") and len(parts) >= 2:
        parts[1] = "{id}"
    elif parts[0] == "images" and len(parts) >= 3:
        parts = ["images", "{name}", parts[-1]]
    return f"{method} {'/'.join(parts)}"


class RequestParser:
    """Splits one connection's client -> daemon bytes into HTTP/1.1 requests (Content-Length bodies;
    the Docker SDK sends nothing chunked here) and reports each request line."""

    def __init__(self, on_request):
        self.on_request = on_request
        self.buf = b""
        self.body_left = 0
        self.lost = False  # something it cannot parse: keep forwarding, stop counting

    def feed(self, data: bytes) -> None:
        while data and not self.lost:
            if self.body_left:
                take = min(len(data), self.body_left)
                self.body_left -= take
                data = data[take:]
                continue
            self.buf += data
            data = b""
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                self.lost = len(self.buf) > 1 << 16
                return
            head, data, self.buf = self.buf[:end].decode("latin-1").split("\r\n"), self.buf[end + 4:], b""
            fields = head[0].split(" ")
            headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:])}
            self.on_request(fields[0], fields[1] if len(fields) > 1 else "")
            if "chunked" in headers.get("transfer-encoding", "").lower() or headers.get("upgrade"):
                self.lost = True
                self.on_request("UNPARSED", "/")
            self.body_left = int(headers.get("content-length") or 0)


def count_proxy(listen: str, stats_path: str, keep_log: bool) -> None:
    """Forward every connection on `listen` to the Docker socket; count requests per (client pid,
    route) and per connection; write the counts to `stats_path` every 0.2 s (atomically)."""
    routes: Counter[str] = Counter()
    connections: dict[int, list[int]] = {}  # connection number -> [client pid, requests]
    log: list[tuple[float, int, str, str]] = []  # (time, pid, route, target) of every request
    cred = struct.calcsize("3i")

    async def handle(reader, writer):
        pid = struct.unpack("3i", writer.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, cred))[0]
        number = len(connections)
        connections[number] = [pid, 0]

        def on_request(method: str, target: str) -> None:
            route = api_route(method, target)
            routes[f"{pid} {route}"] += 1
            connections[number][1] += 1
            if keep_log:
                log.append((time.time(), pid, route, target.split("?", 1)[0]))

        parser = RequestParser(on_request)
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(DOCKER_SOCKET)
        except OSError:
            writer.close()
            return

        async def pump(src, dst, parse):
            try:
                while data := await src.read(1 << 16):
                    if parse:
                        parser.feed(data)
                    dst.write(data)
                    await dst.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                with contextlib.suppress(Exception):
                    dst.close()

        await asyncio.gather(pump(reader, up_writer, True), pump(up_reader, writer, False))

    async def dump_forever():
        while True:
            tmp = stats_path + ".tmp"
            Path(tmp).write_text(json.dumps({"t": time.time(), "routes": routes, "connections": connections,
                                             "log": log}))
            os.replace(tmp, stats_path)
            await asyncio.sleep(0.2)

    async def main():
        with contextlib.suppress(FileNotFoundError):
            os.unlink(listen)
        server = await asyncio.start_unix_server(handle, path=listen)
        os.chmod(listen, 0o660)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, server.close)
        dumper = asyncio.create_task(dump_forever())
        async with server:
            with contextlib.suppress(asyncio.CancelledError):
                await server.wait_closed()
        dumper.cancel()

    asyncio.run(main())


class ProxyStats:
    """Reads a count_proxy's stats file; snapshots subtract."""

    def __init__(self, path: Path):
        self.path = path

    def snapshot(self) -> dict:
        asked = time.time()
        for _ in range(100):
            with contextlib.suppress(FileNotFoundError, ValueError):
                data = json.loads(self.path.read_text())
                if data["t"] > asked:  # a dump written after this call: nothing counted so far is missed
                    return data
            time.sleep(0.05)
        raise SystemExit(f"counting proxy stopped writing {self.path}")

    @staticmethod
    def routes_between(before: dict, after: dict, pid: int | None = None) -> Counter[str]:
        diff = Counter(after["routes"]) - Counter(before["routes"])
        out: Counter[str] = Counter()
        for key, n in diff.items():
            who, _, route = key.partition(" ")
            if pid is None or int(who) == pid:
                out[route] += n
        return out


def start_proxy(tmp: Path, name: str, *, keep_log: bool) -> tuple[subprocess.Popen, str, ProxyStats]:
    listen, stats = tmp / f"{name}.sock", tmp / f"{name}.json"
    proc = subprocess.Popen([sys.executable, __file__, str(listen), str(stats), *(["--log"] if keep_log else [])],
                            start_new_session=True)
    deadline = time.monotonic() + 15
    while not (listen.exists() and stats.exists()):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"counting proxy {name} did not start")
        time.sleep(0.05)
    return proc, f"unix://{listen}", ProxyStats(stats)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("listen")
    parser.add_argument("stats")
    parser.add_argument("--log", action="store_true", help="keep a log of every request")
    options = parser.parse_args()
    count_proxy(options.listen, options.stats, options.log)
