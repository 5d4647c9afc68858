"""A real HTTP server on loopback that answers from a script: each request takes the next answer
queued for its method and path prefix (the last one repeats). For client behaviour a live launcher
cannot be made to show on cue: a 500 then a 200, a 404, a 401, a page that is not JSON."""

from __future__ import annotations

import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class ScriptedLauncher:
    def __init__(self):
        self.answers: dict[tuple[str, str], list[tuple[int, object, dict]]] = defaultdict(list)
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Authorization)
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def script(self, method: str, prefix: str, *answers: tuple) -> None:
        """Queue answers: (status, body) or (status, body, headers); body a dict/list (JSON) or str."""
        with self.lock:
            self.answers[(method, prefix)].extend(a if len(a) == 3 else (*a, {}) for a in answers)

    def count(self, method: str, prefix: str) -> int:
        with self.lock:
            return sum(1 for m, p, _ in self.requests if m == method and p.startswith(prefix))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def _answer(self, method: str, path: str) -> tuple[int, object, dict]:
        with self.lock:
            for (m, prefix), queue in self.answers.items():
                if m == method and path.startswith(prefix) and queue:
                    return queue.pop(0) if len(queue) > 1 else queue[0]
        return 404, {"detail": "Not found."}, {}

    def _handler(self):
        scripted = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                with scripted.lock:
                    scripted.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
                status, body, headers = scripted._answer(self.command, self.path)
                data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html" if isinstance(body, str) else "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = _serve

            def log_message(self, *args):
                pass

        return Handler
