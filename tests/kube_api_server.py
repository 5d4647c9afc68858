"""A loopback Kubernetes API server for tests: just enough of core/v1 for the real `kubernetes`
client to create, read, list, watch, patch and delete Pods, Secrets and Events, plus /version,
pod logs and SelfSubjectAccessReview.

Nothing here runs containers. A test plays the kubelet and the scheduler itself: it sets a pod's
status (helpers below build the usual ones), scripts a sequence of statuses and advances it step by
step, adds Events with a chosen age, and injects 401/403, dropped watches and 410 Gone. Every
change bumps a global resourceVersion and is delivered to open watches as chunked JSON lines.
"""

from __future__ import annotations

import base64
import copy
import json
import socket
import threading
import time
import uuid
from collections.abc import Callable
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

TOKEN = "loopback-token"
RESOURCES = ("pods", "secrets", "events")
LIST_KINDS = {"pods": "PodList", "secrets": "SecretList", "events": "EventList"}
KINDS = {"pods": "Pod", "secrets": "Secret", "events": "Event"}


def rfc3339(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# ---------------------------------------------------------------------------------------------
# Pod statuses a kubelet / scheduler would write. Container names are filled in by the server
# from the pod's first container when left as None.
# ---------------------------------------------------------------------------------------------


def unscheduled(message: str = "0/1 nodes are available: 1 Insufficient cpu.", reason: str = "Unschedulable") -> dict:
    return {"phase": "Pending", "conditions": [
        {"type": "PodScheduled", "status": "False", "reason": reason, "message": message}]}


def pending() -> dict:
    """Pending with no scheduling verdict yet (no conditions)."""
    return {"phase": "Pending"}


def waiting(reason: str, message: str = "") -> dict:
    """Scheduled, main container waiting (ErrImagePull, CrashLoopBackOff, ContainerCreating...)."""
    return {"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": None, "ready": False, "restartCount": 0, "image": "",
                                   "imageID": "", "state": {"waiting": {"reason": reason, "message": message}}}]}


def running() -> dict:
    return {"phase": "Running", "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": None, "ready": True, "restartCount": 0, "image": "", "imageID": "",
                                   "state": {"running": {"startedAt": rfc3339(time.time())}}}]}


def terminated(phase: str, exit_code: int, reason: str | None = None) -> dict:
    state = {"terminated": {"exitCode": exit_code, "reason": reason or ("Completed" if exit_code == 0 else "Error")}}
    return {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": None, "ready": False, "restartCount": 0, "image": "", "imageID": "",
                                   "state": state}]}


def succeeded(exit_code: int = 0) -> dict:
    return terminated("Succeeded", exit_code)


def failed(exit_code: int = 1, reason: str | None = None) -> dict:
    return terminated("Failed", exit_code, reason)


def unknown() -> dict:
    return {"phase": "Unknown"}


# ---------------------------------------------------------------------------------------------
# Selectors and patches
# ---------------------------------------------------------------------------------------------


def _lookup(obj: dict, dotted: str) -> Any:
    value: Any = obj
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def label_selector_matches(selector: str | None, labels: dict[str, str]) -> bool:
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            if labels.get(key) == value:
                return False
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            if labels.get(key) != value:
                return False
        elif term.startswith("!"):
            if term[1:] in labels:
                return False
        elif term not in labels:
            return False
    return True


def field_selector_matches(selector: str | None, obj: dict) -> bool:
    for term in filter(None, (t.strip() for t in (selector or "").split(","))):
        negate = "!=" in term
        key, value = term.replace("!=", "=").replace("==", "=").split("=", 1)
        found = _lookup(obj, key)
        if (str(found) if found is not None else "") == value:
            if negate:
                return False
        elif not negate:
            return False
    return True


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (also used for strategic merge: lists are replaced)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def status_body(code: int, reason: str, message: str) -> dict:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": message, "reason": reason, "code": code}


# ---------------------------------------------------------------------------------------------
# The server
# ---------------------------------------------------------------------------------------------


class KubeAPIServer:
    """Start with `start()`, point a client at `write_kubeconfig(path)`, stop with `stop()`."""

    def __init__(self, *, token: str = TOKEN, user: str = "system:serviceaccount:default:flare-launcher",
                 clock: Callable[[], float] = time.time):
        self.clock = clock  # stamps creationTimestamp and lastTransitionTime (tests move it by hand)
        self.token = token
        self.user = user
        self.cond = threading.Condition()
        self.rv = 100
        self.store: dict[str, dict[tuple[str, str], dict]] = {r: {} for r in RESOURCES}
        self.changes: list[tuple[int, str, str, str, dict]] = []  # (rv, resource, ns, type, obj)
        self.compacted_rv = 0  # watches resuming from an older resourceVersion get 410 Gone
        self.denied: set[tuple[str, str]] = set()  # (verb, "pods" | "pods/log" | "secrets" ...)
        self.unauthorized = False
        self.requests: list[tuple[str, str, dict[str, list[str]]]] = []
        self.deletions: list[tuple[str, str, int | None]] = []  # (resource, name, gracePeriodSeconds)
        self.pod_logs: dict[str, str] = {}
        self.scripts: dict[str, list[dict]] = {}
        self.drop_generation = 0
        self.gone_generation = 0
        self.active_watches = 0
        self.stopping = False
        self.version = {"major": "1", "minor": "31", "gitVersion": "v1.31.0-loopback", "platform": "linux/amd64"}
        self.sockets: set[socket.socket] = set()  # open client connections, cut on stop()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        server = self

        class Handler(_Handler):
            api = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                        daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        with self.cond:
            self.stopping = True
            self.cond.notify_all()
        if self._httpd:
            self._httpd.shutdown()
            self._httpd.server_close()
        with self.cond:
            sockets, self.sockets = list(self.sockets), set()
        for sock in sockets:  # keep-alive connections would otherwise go on being served
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    @property
    def url(self) -> str:
        assert self._httpd is not None
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def write_kubeconfig(self, path: str, *, namespace: str = "default") -> str:
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "loopback",
            "clusters": [{"name": "loopback", "cluster": {"server": self.url}}],
            "users": [{"name": "loopback", "user": {"token": self.token}}],
            "contexts": [{"name": "loopback", "context": {"cluster": "loopback", "user": "loopback",
                                                          "namespace": namespace}}],
        }
        with open(path, "w") as f:
            json.dump(config, f)
        return path

    # -- store (call with self.cond held) -------------------------------------------------------

    def _bump(self, resource: str, ns: str, etype: str, obj: dict) -> None:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        self.changes.append((self.rv, resource, ns, etype, copy.deepcopy(obj)))
        self.cond.notify_all()

    def _create(self, resource: str, ns: str, body: dict) -> tuple[int, dict]:
        meta = body.setdefault("metadata", {})
        name = meta.get("name")
        if not name:
            return 422, status_body(422, "Invalid", "metadata.name: Required value")
        if resource == "pods" and len(name) > 63:
            return 422, status_body(422, "Invalid", "metadata.name: must be no more than 63 characters")
        if (ns, name) in self.store[resource]:
            return 409, status_body(409, "AlreadyExists", f'{resource} "{name}" already exists')
        meta.update(namespace=ns, uid=str(uuid.uuid4()), creationTimestamp=rfc3339(self.clock()))
        body.setdefault("apiVersion", "v1")
        body.setdefault("kind", KINDS[resource])
        if resource == "secrets":
            _fold_string_data(body)
        if resource == "pods":
            body["status"] = {"phase": "Pending"}
            steps = self.scripts.get(name)
            if steps:
                self._apply_status(body, steps.pop(0))
        self.store[resource][(ns, name)] = body
        self._bump(resource, ns, "ADDED", body)
        return 201, body

    def _apply_status(self, pod: dict, status: dict) -> None:
        status = copy.deepcopy(status)
        main = (pod.get("spec") or {}).get("containers", [{}])[0].get("name", "main")
        for key in ("containerStatuses", "initContainerStatuses"):
            for cs in status.get(key) or []:
                if cs.get("name") is None:
                    cs["name"] = main
        before = {(c.get("type"), c.get("status")): c for c in (pod.get("status") or {}).get("conditions") or []}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "True":
                pod["spec"]["nodeName"] = "loopback-node"
            # As the kubelet and scheduler do: the time moves only when the condition changes.
            same = before.get((cond.get("type"), cond.get("status"))) or {}
            cond.setdefault("lastTransitionTime", same.get("lastTransitionTime") or rfc3339(self.clock()))
        pod["status"] = status

    # -- test controls: the kubelet, the scheduler and the network -------------------------------

    def pod(self, name: str, ns: str = "default") -> dict | None:
        with self.cond:
            obj = self.store["pods"].get((ns, name))
            return copy.deepcopy(obj) if obj else None

    def secret(self, name: str, ns: str = "default") -> dict | None:
        with self.cond:
            obj = self.store["secrets"].get((ns, name))
            return copy.deepcopy(obj) if obj else None

    def objects(self, resource: str, ns: str = "default") -> list[dict]:
        with self.cond:
            return [copy.deepcopy(o) for (n, _), o in self.store[resource].items() if n == ns]

    def set_status(self, name: str, status: dict, ns: str = "default") -> None:
        with self.cond:
            pod = self.store["pods"][(ns, name)]
            self._apply_status(pod, status)
            self._bump("pods", ns, "MODIFIED", pod)

    def script(self, name: str, steps: list[dict]) -> None:
        """Statuses for `name`, applied one per `advance()`; the first at create when the pod does not exist yet."""
        with self.cond:
            self.scripts[name] = [copy.deepcopy(s) for s in steps]
            exists = any(n == name for (_, n) in self.store["pods"])
        if exists:
            self.advance(name)

    def advance(self, name: str, ns: str = "default") -> dict:
        with self.cond:
            step = self.scripts[name].pop(0)
        self.set_status(name, step, ns)
        return step

    def set_logs(self, name: str, text: str) -> None:
        with self.cond:
            self.pod_logs[name] = text

    def add_event(self, pod: str, reason: str, message: str, *, type: str = "Warning", age: float = 0.0,
                  ns: str = "default", timestamps: bool = True) -> dict:
        when = rfc3339(time.time() - age)
        with self.cond:
            target = self.store["pods"].get((ns, pod)) or {"metadata": {}}
            name = f"{pod}.{uuid.uuid4().hex[:12]}"
            event = {
                "apiVersion": "v1", "kind": "Event",
                "metadata": {"name": name, "namespace": ns, "uid": str(uuid.uuid4()),
                             **({"creationTimestamp": when} if timestamps else {})},
                "involvedObject": {"kind": "Pod", "name": pod, "namespace": ns,
                                   "uid": target["metadata"].get("uid")},
                "reason": reason, "message": message, "type": type, "count": 1,
                "firstTimestamp": when if timestamps else None, "lastTimestamp": when if timestamps else None,
                "source": {"component": "default-scheduler"},
            }
            self.store["events"][(ns, name)] = event
            self._bump("events", ns, "ADDED", event)
            return copy.deepcopy(event)

    def drop_watches(self) -> None:
        """Cut every open watch connection mid-stream (no final chunk)."""
        with self.cond:
            self.drop_generation += 1
            self.cond.notify_all()

    def expire_watches(self, then: Callable[[], None] | None = None) -> None:
        """Compact history and send `ERROR 410 Gone` to open watches; `then` runs under the same
        lock, so its changes reach the client only through a relist."""
        with self.cond:
            self.gone_generation += 1
            self.compacted_rv = self.rv + 1
            if then:
                then()
            self.cond.notify_all()

    def wait_for_watches(self, count: int, timeout: float = 5.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while self.active_watches < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(left)
        return True

    def count(self, method: str, path_part: str, *, watch: bool | None = None) -> int:
        with self.cond:
            return sum(1 for m, p, q in self.requests
                       if m == method and p.endswith(path_part)
                       and (watch is None or (q.get("watch") == ["true"]) == watch))


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
