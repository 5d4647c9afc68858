"""A loopback Kubernetes API server for tests: just enough of core/v1 for the real `kubernetes`
client to create, read, list, watch, patch and delete Pods, Secrets and Events, plus /version,
pod logs and SelfSubjectAccessReview.

By default nothing here runs containers: a test plays the kubelet and the scheduler itself: it sets
a pod's status (helpers below build the usual ones), scripts a sequence of statuses and advances it
step by step, adds Events with a chosen age, and injects 401/403, dropped watches and 410 Gone. Every
change bumps a global resourceVersion and is delivered to open watches as chunked JSON lines.

`enable_kubelet(root)` switches on a kubelet mode (tests/kube_kubelet.py): each pod created from then
on runs its main container as a local process, with its Secrets and volumes laid out under `root`.
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
from http.server import ThreadingHTTPServer

from tests.kube_api_http import _fold_string_data, _Handler
from tests.kube_kubelet import Kubelet
from tests.kube_objects import (  # noqa: F401  (the status builders: tests call kube.running() etc.)
    KINDS,
    RESOURCES,
    failed,
    field_selector_matches,
    label_selector_matches,
    merge_patch,
    pending,
    rfc3339,
    running,
    status_body,
    succeeded,
    terminated,
    unknown,
    unscheduled,
    waiting,
)

TOKEN = "loopback-token"


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
        self.kubelet: Kubelet | None = None
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

    def enable_kubelet(self, root: str, *, env: dict[str, str] | None = None) -> Kubelet:
        """Run the pods created from now on as local processes (tests/kube_kubelet.py); `env` is
        added to each container's base environment."""
        self.kubelet = Kubelet(self, root, env=env)
        return self.kubelet

    def stop(self) -> None:
        if self.kubelet is not None:
            self.kubelet.stop()
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
        if resource == "pods" and self.kubelet is not None:
            self.kubelet.pod_created(ns, name)
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

    def add_secret(self, name: str, data: dict[str, bytes], ns: str = "default") -> dict:
        """A Secret made by someone else (a site admin), as `kubectl create secret generic` would."""
        body = {"metadata": {"name": name}, "type": "Opaque",
                "data": {k: base64.b64encode(v).decode() for k, v in data.items()}}
        with self.cond:
            code, obj = self._create("secrets", ns, body)
        assert code == 201, obj
        return copy.deepcopy(obj)

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
