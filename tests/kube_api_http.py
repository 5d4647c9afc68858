"""The HTTP side of the loopback Kubernetes API server (tests/kube_api_server.py): routes core/v1
requests of the real `kubernetes` client to the server's store, lists and chunked watches."""

from __future__ import annotations

import base64
import copy
import json
import socket
import time
from http.server import BaseHTTPRequestHandler
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from tests.kube_objects import (
    LIST_KINDS,
    RESOURCES,
    field_selector_matches,
    label_selector_matches,
    merge_patch,
    status_body,
)

if TYPE_CHECKING:
    from tests.kube_api_server import KubeAPIServer


def _fold_string_data(secret: dict) -> None:
    string_data = secret.pop("stringData", None) or {}
    data = dict(secret.get("data") or {})
    for key, value in string_data.items():
        data[key] = base64.b64encode(value.encode()).decode()
    secret["data"] = data


class _Handler(BaseHTTPRequestHandler):
    api: KubeAPIServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # no 40 ms Nagle stalls
        with self.api.cond:
            if self.api.stopping:
                self.connection.close()
            self.api.sockets.add(self.connection)

    def finish(self) -> None:
        with self.api.cond:
            self.api.sockets.discard(self.connection)
        try:
            super().finish()
        except OSError:
            pass

    # -- plumbing -------------------------------------------------------------------------------

    def _send(self, code: int, body: Any, content_type: str = "application/json") -> None:
        data = body.encode() if isinstance(body, str) else json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw) if raw else None

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        api = self.api
        url = urlparse(self.path)
        query = parse_qs(url.query)
        body = self._body() if method in ("POST", "PUT", "PATCH", "DELETE") else None
        with api.cond:
            api.requests.append((method, url.path, query))
        if api.unauthorized or self.headers.get("Authorization") != f"Bearer {api.token}":
            return self._send(401, status_body(401, "Unauthorized", "Unauthorized"))
        parts = [p for p in url.path.split("/") if p]
        if url.path.rstrip("/") == "/version":
            return self._send(200, api.version)
        if parts[:4] == ["apis", "authorization.k8s.io", "v1", "selfsubjectaccessreviews"] and method == "POST":
            return self._access_review(body)
        if parts[:3] != ["api", "v1", "namespaces"] or len(parts) < 4:
            return self._send(404, status_body(404, "NotFound", "the server could not find the requested resource"))
        ns = parts[3]
        if len(parts) == 4:
            return self._send(200, {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                                    "status": {"phase": "Active"}})
        resource = parts[4]
        name = parts[5] if len(parts) > 5 else None
        sub = parts[6] if len(parts) > 6 else None
        if resource not in RESOURCES:
            return self._send(404, status_body(404, "NotFound", f"unknown resource {resource}"))
        watching = query.get("watch") == ["true"]
        verb = {"GET": "watch" if watching else ("get" if name else "list"), "POST": "create", "PUT": "update",
                "PATCH": "patch", "DELETE": "delete"}[method]
        target = f"{resource}/{sub}" if sub else resource
        if (verb, target) in api.denied:
            return self._send(403, status_body(
                403, "Forbidden", f'{target} "{name or ""}" is forbidden: User "{api.user}" cannot {verb} '
                                  f'resource "{target}" in API group "" in the namespace "{ns}"'))
        if sub == "log":
            return self._log(ns, name, query)
        if name is None and method == "GET":
            return self._watch(resource, ns, query) if watching else self._list(resource, ns, query)
        if name is None and method == "POST":
            with api.cond:
                code, obj = api._create(resource, ns, body or {})
            return self._send(code, obj)
        return self._item(method, resource, ns, name, body, query)

    def _access_review(self, body: dict) -> None:
        attrs = ((body or {}).get("spec") or {}).get("resourceAttributes") or {}
        target = attrs.get("resource", "") + (f"/{attrs['subresource']}" if attrs.get("subresource") else "")
        allowed = (attrs.get("verb"), target) not in self.api.denied
        self._send(201, {**body, "status": {"allowed": allowed, **({} if allowed else {"reason": "RBAC: denied"})}})

    def _log(self, ns: str, name: str, query: dict) -> None:
        api = self.api
        with api.cond:
            if (ns, name) not in api.store["pods"]:
                return self._send(404, status_body(404, "NotFound", f'pods "{name}" not found'))
            text = api.pod_logs.get(name, "")
        tail = query.get("tailLines")
        if tail:
            lines = text.splitlines(keepends=True)
            text = "".join(lines[-int(tail[0]):]) if int(tail[0]) else ""
        self._send(200, text, "text/plain")

    def _list(self, resource: str, ns: str, query: dict) -> None:
        api = self.api
        with api.cond:
            items = [copy.deepcopy(o) for (n, _), o in sorted(api.store[resource].items()) if n == ns
                     and label_selector_matches((query.get("labelSelector") or [None])[0],
                                                o["metadata"].get("labels") or {})
                     and field_selector_matches((query.get("fieldSelector") or [None])[0], o)]
            rv = str(api.rv)
        limit = int((query.get("limit") or ["0"])[0])
        if limit:
            items = items[:limit]
        self._send(200, {"apiVersion": "v1", "kind": LIST_KINDS[resource], "metadata": {"resourceVersion": rv},
                         "items": items})

    def _item(self, method: str, resource: str, ns: str, name: str, body: Any, query: dict) -> None:
        api = self.api
        with api.cond:
            current = api.store[resource].get((ns, name))
            if current is None:
                return self._send(404, status_body(404, "NotFound", f'{resource} "{name}" not found'))
            if method == "GET":
                return self._send(200, copy.deepcopy(current))
            if method == "DELETE":
                grace = (query.get("gracePeriodSeconds") or [None])[0]
                if grace is None and isinstance(body, dict):
                    grace = body.get("gracePeriodSeconds")
                api.deletions.append((resource, name, None if grace is None else int(grace)))
                del api.store[resource][(ns, name)]
                api._bump(resource, ns, "DELETED", current)
                if resource == "pods" and api.kubelet is not None:
                    api.kubelet.pod_deleted(ns, name)  # kills its process (takes only the kubelet's lock)
                return self._send(200, copy.deepcopy(current))
            if method == "PUT":
                new = copy.deepcopy(body)
                new.setdefault("metadata", {}).update(
                    uid=current["metadata"]["uid"], namespace=ns,
                    creationTimestamp=current["metadata"]["creationTimestamp"])
                if resource == "secrets":
                    _fold_string_data(new)
                if resource == "pods":
                    new["status"] = current.get("status")
            else:  # PATCH: merge or strategic merge (lists replaced) or a JSON patch list of add/replace
                if isinstance(body, list):
                    new = copy.deepcopy(current)
                    for op in body:
                        *path, last = [p for p in op["path"].split("/") if p]
                        node = new
                        for p in path:
                            node = node.setdefault(p, {})
                        node[last] = op.get("value")
                else:
                    new = merge_patch(current, body)
                    if resource == "secrets":
                        _fold_string_data(new)
            api.store[resource][(ns, name)] = new
            api._bump(resource, ns, "MODIFIED", new)
            return self._send(200, copy.deepcopy(new))

    def _chunk(self, obj: dict) -> None:
        data = (json.dumps(obj) + "\n").encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _watch(self, resource: str, ns: str, query: dict) -> None:
        api = self.api
        labels = (query.get("labelSelector") or [None])[0]
        fields = (query.get("fieldSelector") or [None])[0]
        timeout = float((query.get("timeoutSeconds") or ["1800"])[0])
        since = (query.get("resourceVersion") or [""])[0]
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def matches(obj: dict) -> bool:
            return label_selector_matches(labels, obj["metadata"].get("labels") or {}) \
                and field_selector_matches(fields, obj)

        with api.cond:
            drop_gen, gone_gen = api.drop_generation, api.gone_generation
            if since and since != "0" and int(since) < api.compacted_rv:
                pending = [{"type": "ERROR", "object": status_body(410, "Expired", f"too old resource version: {since}")}]
                cursor, finished = api.rv, True
            elif not since or since == "0":
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)}
                           for (n, _), o in api.store[resource].items() if n == ns and matches(o)]
                cursor, finished = api.rv, False
            else:
                pending, cursor, finished = [], int(since), False
            api.active_watches += 1
            api.cond.notify_all()
        deadline = time.monotonic() + timeout
        try:
            while True:
                for event in pending:
                    self._chunk(event)
                if finished:
                    break
                with api.cond:
                    while True:
                        if api.stopping or api.drop_generation != drop_gen:
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        if api.gone_generation != gone_gen:
                            pending = [{"type": "ERROR", "object": status_body(410, "Expired", "watch expired")}]
                            finished = True
                            break
                        new = [c for c in api.changes if c[0] > cursor and c[1] == resource and c[2] == ns]
                        if new:
                            cursor = new[-1][0]
                            pending = [{"type": t, "object": copy.deepcopy(o)} for _, _, _, t, o in new if matches(o)]
                            break
                        left = deadline - time.monotonic()
                        if left <= 0:
                            pending, finished = [], True
                            break
                        api.cond.wait(min(left, 0.1))
            self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
        except OSError:
            pass
        finally:
            with api.cond:
                api.active_watches -= 1
                api.cond.notify_all()
