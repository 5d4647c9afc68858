"""A kubelet for the loopback Kubernetes API server (tests/kube_api_server.py): runs each created
pod's main container as a local process, so that a real NVFlare job can run "in a pod".

Enable it with `KubeAPIServer.enable_kubelet(root)`. For every pod created from then on:

- Volumes: each volume the main container mounts becomes a directory `<root>/<ns>/<pod>/rootfs<mountPath>`
  (nested mounts nest, as in a container): an `emptyDir` starts empty; a `secret` volume gets the
  Secret's keys as files (only the `items` given, at their `path`s, when the volume lists items); a
  `persistentVolumeClaim` is an empty directory. A Secret that does not exist (yet) leaves the pod
  Pending with a `FailedMount` Warning event, retried until it appears, as a kubelet does.
- Paths: container paths such as /var/tmp/nvflare/workspace do not exist on this host, so every
  occurrence of a mount path (as a path prefix) in the container's command, args, env values and
  workingDir is rewritten to its directory under `rootfs` (one pass, longest mount path first).
  Nothing else is rewritten: files the process reads are taken as they are.
- Env: the container's `env`, with `valueFrom.secretKeyRef` resolved from the stored Secrets (a
  missing Secret or key: the container waits with CreateContainerConfigError, as on a real node),
  over a base of PATH (this host's), HOME (`<pod dir>/home`) and HOSTNAME (the pod name). The
  image is not used: the command runs on this host (so its python must exist here).
- Status: Pending (scheduled, ContainerCreating) -> Running -> Succeeded (exit 0) or Failed (the exit
  code in `containerStatuses[].state.terminated.exitCode`; a command that cannot start is Failed
  with 128 and reason StartError). Every change is an ordinary status update: watches see it.
- Logs: the process's stdout and stderr, merged, are the pod log (`GET .../pods/{name}/log`).
- Deleting the pod kills the process group at once (SIGKILL; a grace period is not waited for).

Only the first container runs; init containers and sidecars are ignored.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from typing import TYPE_CHECKING, Any

from tests.kube_objects import rfc3339, waiting

if TYPE_CHECKING:
    from tests.kube_api_server import KubeAPIServer

MOUNT_RETRY_SECONDS = 0.2


class Kubelet:
    def __init__(self, api: KubeAPIServer, root: str, *, env: dict[str, str] | None = None):
        self.api = api
        self.root = root
        self.base_env = env or {}
        self.procs: dict[tuple[str, str], subprocess.Popen] = {}
        self.deleted: set[tuple[str, str]] = set()
        self.threads: list[threading.Thread] = []
        self._lock = threading.Lock()

    # -- called by the API server ----------------------------------------------------------------

    def pod_created(self, ns: str, name: str) -> None:
        with self._lock:
            self.deleted.discard((ns, name))
        thread = threading.Thread(target=self._run, args=(ns, name), name=f"kubelet-{name}", daemon=True)
        self.threads.append(thread)
        thread.start()

    def pod_deleted(self, ns: str, name: str) -> None:
        with self._lock:
            self.deleted.add((ns, name))
            proc = self.procs.get((ns, name))
        if proc is not None and proc.poll() is None:
            _kill(proc)

    def stop(self) -> None:
        with self._lock:
            procs = list(self.procs.values())
            self.deleted.update(self.procs)
        for proc in procs:
            if proc.poll() is None:
                _kill(proc)
        for thread in self.threads:
            thread.join(timeout=5)

    def pod_dir(self, name: str, ns: str = "default") -> str:
        return os.path.join(self.root, ns, name)

    def host_path(self, name: str, container_path: str, ns: str = "default") -> str:
        """Where `container_path` of pod `name` is on this host."""
        return os.path.join(self.pod_dir(name, ns), "rootfs") + container_path

    # -- the pod's life ----------------------------------------------------------------------------

    def _gone(self, ns: str, name: str) -> bool:
        with self._lock:
            return (ns, name) in self.deleted

    def _pod(self, ns: str, name: str) -> dict | None:
        return self.api.pod(name, ns)

    def _status(self, ns: str, name: str, status: dict) -> None:
        with self.api.cond:
            if (ns, name) not in self.api.store["pods"] or self._gone(ns, name):
                return
        try:
            self.api.set_status(name, status, ns)
        except KeyError:  # deleted meanwhile
            pass

    def _secret(self, ns: str, name: str) -> dict | None:
        return self.api.secret(name, ns)

    def _run(self, ns: str, name: str) -> None:
        pod = self._pod(ns, name)
        if pod is None:
            return
        main = pod["spec"]["containers"][0]
        rootfs = os.path.join(self.pod_dir(name, ns), "rootfs")
        shutil.rmtree(self.pod_dir(name, ns), ignore_errors=True)
        os.makedirs(rootfs)
        self._status(ns, name, waiting("ContainerCreating"))
        mounts = sorted(main.get("volumeMounts") or [], key=lambda m: len(m["mountPath"]))
        if not self._mount_all(ns, name, pod, mounts, rootfs):
            return
        rewrite = _rewriter([m["mountPath"] for m in mounts], rootfs)
        env = self._env(ns, name, main.get("env") or [], rewrite)
        if env is None:
            return
        home = os.path.join(self.pod_dir(name, ns), "home")
        os.makedirs(home, exist_ok=True)
        full_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": home, "HOSTNAME": name,
                    **self.base_env, **env}
        argv = [rewrite(a) for a in [*(main.get("command") or []), *(main.get("args") or [])]]
        cwd = rewrite(main["workingDir"]) if main.get("workingDir") else rootfs
        try:
            proc = subprocess.Popen(argv, env=full_env, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        except OSError as exc:
            self._status(ns, name, _ended("Failed", 128, "StartError", f"{type(exc).__name__}: {exc.strerror}"))
            return
        with self._lock:
            self.procs[(ns, name)] = proc
            gone = (ns, name) in self.deleted
        if gone:
            _kill(proc)
        self._status(ns, name, {"phase": "Running", "podIP": "127.0.0.1", "hostIP": "127.0.0.1",
                                "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "True"}],
                                "containerStatuses": [{"name": None, "ready": True, "restartCount": 0, "image": main.get("image", ""),
                                                       "imageID": "", "state": {"running": {"startedAt": rfc3339(time.time())}}}]})
        assert proc.stdout is not None
        for line in iter(proc.stdout.readline, b""):
            with self.api.cond:
                self.api.pod_logs[name] = self.api.pod_logs.get(name, "") + line.decode("utf-8", "replace")
        code = proc.wait()
        if code < 0:  # killed by a signal: a container reports 128 + signal
            code = 128 - code
        self._status(ns, name, _ended("Succeeded" if code == 0 else "Failed", code,
                                      "Completed" if code == 0 else "Error"))

    def _mount_all(self, ns: str, name: str, pod: dict, mounts: list[dict], rootfs: str) -> bool:
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for mount in mounts:
            target = rootfs + mount["mountPath"]
            volume = volumes.get(mount["name"]) or {}
            os.makedirs(target, exist_ok=True)
            if "secret" in volume:
                secret_name = volume["secret"].get("secretName")
                warned = False
                while (secret := self._secret(ns, secret_name)) is None:
                    if self._gone(ns, name):
                        return False
                    if not warned:
                        self.api.add_event(name, "FailedMount", f'MountVolume.SetUp failed for volume '
                                           f'"{mount["name"]}" : secret "{secret_name}" not found', ns=ns)
                        warned = True
                    with self.api.cond:  # woken by any change to the store, e.g. the Secret created
                        self.api.cond.wait(MOUNT_RETRY_SECONDS)
                _write_secret(target, secret, volume["secret"].get("items"))
            elif not ("emptyDir" in volume or "persistentVolumeClaim" in volume):
                self.api.add_event(name, "FailedMount", f'volume "{mount["name"]}" is not supported here', ns=ns)
                return False
        return True

    def _env(self, ns: str, name: str, items: list[dict], rewrite) -> dict[str, str] | None:
        env: dict[str, str] = {}
        for item in items:
            if "value" in item:
                env[item["name"]] = rewrite(str(item["value"]))
                continue
            ref = (item.get("valueFrom") or {}).get("secretKeyRef")
            if ref is None:
                continue  # fieldRef & co. are not modelled
            secret = self._secret(ns, ref["name"])
            data = (secret or {}).get("data") or {}
            if ref["key"] not in data:
                if ref.get("optional"):
                    continue
                why = (f'secret "{ref["name"]}" not found' if secret is None
                       else f"couldn't find key {ref['key']} in Secret {ns}/{ref['name']}")
                self._status(ns, name, waiting("CreateContainerConfigError", why))
                return None
            env[item["name"]] = base64.b64decode(data[ref["key"]]).decode()
        return env


def _write_secret(target: str, secret: dict, items: list[dict] | None) -> None:
    data = secret.get("data") or {}
    wanted = [(i["key"], i["path"]) for i in items] if items else [(k, k) for k in data]
    for key, path in wanted:
        if key not in data:
            continue
        file_path = os.path.join(target, path)
        os.makedirs(os.path.dirname(file_path), exist_ok=True)
        with open(file_path, "wb") as f:
            f.write(base64.b64decode(data[key]))


def _rewriter(mount_paths: list[str], rootfs: str):
    """Prefix every mount path found in a string (as a path, not inside a longer name) with rootfs."""
    if not mount_paths:
        return lambda value: value
    alternatives = "|".join(re.escape(p.rstrip("/") or "/") for p in sorted(set(mount_paths), key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])(?:{alternatives})(?=/|$|[:;,\s\"'=])")
    return lambda value: pattern.sub(lambda m: rootfs + m.group(0), value)


def _ended(phase: str, code: int, reason: str, message: str = "") -> dict[str, Any]:
    state = {"terminated": {"exitCode": code, "reason": reason, "finishedAt": rfc3339(time.time()),
                            **({"message": message} if message else {})}}
    return {"phase": phase, "conditions": [{"type": "PodScheduled", "status": "True"}],
            "containerStatuses": [{"name": None, "ready": False, "restartCount": 0, "image": "", "imageID": "",
                                   "state": state}]}


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
