"""Kubernetes backend: each NVFlare job is one bare Pod (launch-semantics.md §4).

Manifests come from the pure builders in `k8s_manifests.py`; this module sends them and reads the
replies, always as JSON dicts (`_preload_content=False`), with an explicit timeout on every call.
Pending pods are classified exactly as NVFlare does (§4.8). Timers for pending pods and the site
start timeout live in this instance's memory: they restart from zero after a process restart (the
pod is then judged again from its first observation by the new process).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from kubernetes.watch.watch import iter_resp_lines

from backends import k8s_manifests as km
from backends import nvflare
from backends.base import (
    LABEL_JOB_PK,
    LABEL_MANAGED_BY,
    LABEL_SITE,
    MANAGED_BY,
    Backend,
    BackendError,
    CheckResult,
    Handle,
    InvalidJobSpec,
    JobRequest,
    JobState,
    LaunchSpec,
    Observation,
    ReturnCode,
)

log = logging.getLogger(__name__)

JOB_KEYS = ("image", "python_path", "num_of_gpus", "cpu", "cpu_request", "memory", "memory_request",
            "ephemeral_storage", "pending_timeout")
# Study env may not shadow what the launcher sets itself (§5.2).
LAUNCHER_OWNED_ENV = ("PYTHONPATH", km.OWNER_FQCN_ENV, km.TRANSFER_TOKEN_ENV, *nvflare.CREDENTIAL_ENV.values())
LOGS_TAIL = 200
# Every verb/resource the backend uses; docs/kubernetes-rbac.yaml grants exactly these.
RBAC_NEEDS = (
    ("create", "pods", ""), ("get", "pods", ""), ("list", "pods", ""), ("watch", "pods", ""),
    ("delete", "pods", ""), ("get", "pods", "log"),
    ("create", "secrets", ""), ("update", "secrets", ""), ("delete", "secrets", ""), ("patch", "secrets", ""),
    ("list", "events", ""), ("watch", "events", ""),
)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class KubernetesSiteConfig:
    config_file_path: str | None = None  # kubeconfig; None -> in-cluster service account (loaded lazily)
    namespace: str = "default"
    timeout: float | None = None  # seconds a pod may take to reach Running (None: no limit)
    pending_timeout: float | None = 120  # seconds to wait for cpu/memory/gpu; jobs may only shorten it
    default_python_path: str = nvflare.DEFAULT_PYTHON_PATH
    security_context: Mapping[str, Any] = field(default_factory=dict)
    ephemeral_storage: str = "1Gi"
    workspace_mount_path: str = "/var/tmp/nvflare/workspace"
    image_pull_secrets: tuple[str, ...] = ()
    startup_dir: str | None = None  # host path of the parent's startup kit, copied into a Secret
    parent_fqcn: str | None = None  # NVFL_WORKSPACE_OWNER_FQCN; None -> the site name
    request_timeout: float = 10  # seconds for each API call (Celery tasks rely on it to stay bounded)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> KubernetesSiteConfig:
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        for key in data:
            if key not in known:
                raise InvalidJobSpec(f"kubernetes.{key}", "unknown setting")
        d = cls()
        path = data.get("config_file_path") or None
        if path is not None and not isinstance(path, str):
            raise InvalidJobSpec("kubernetes.config_file_path", "must be a file path or empty for in-cluster")
        namespace = data.get("namespace", d.namespace)
        if not isinstance(namespace, str) or not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
            raise InvalidJobSpec("kubernetes.namespace", "must be an RFC 1123 label such as 'default'")
        timeout = data.get("timeout")
        if timeout is not None and (not _number(timeout) or timeout <= 0):
            raise InvalidJobSpec("kubernetes.timeout", "must be a positive number of seconds or null")
        pending = data.get("pending_timeout", d.pending_timeout)
        if pending is not None and (not _number(pending) or pending < 0):
            raise InvalidJobSpec("kubernetes.pending_timeout", "must be a non-negative number of seconds or null")
        python_path = nvflare.check_python_path(
            data.get("default_python_path", d.default_python_path), "kubernetes.default_python_path")
        security_context = data.get("security_context") or {}
        if not isinstance(security_context, Mapping):
            raise InvalidJobSpec("kubernetes.security_context", "must be a mapping (pod securityContext)")
        storage = data.get("ephemeral_storage", d.ephemeral_storage)
        if not isinstance(storage, str) or not km.is_quantity(storage):
            raise InvalidJobSpec("kubernetes.ephemeral_storage", "must be a quantity such as '1Gi'")
        mount = data.get("workspace_mount_path", d.workspace_mount_path)
        if not isinstance(mount, str) or not mount.startswith("/"):
            raise InvalidJobSpec("kubernetes.workspace_mount_path", "must be an absolute path")
        secrets = data.get("image_pull_secrets") or []
        if not isinstance(secrets, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in secrets):
            raise InvalidJobSpec("kubernetes.image_pull_secrets", "must be a list of non-blank Secret names")
        startup_dir = data.get("startup_dir") or None
        if startup_dir is not None and (not isinstance(startup_dir, str) or not os.path.isabs(startup_dir)):
            raise InvalidJobSpec("kubernetes.startup_dir", "must be an absolute directory path")
        fqcn = data.get("parent_fqcn") or None
        if fqcn is not None and (not isinstance(fqcn, str) or not fqcn.strip()):
            raise InvalidJobSpec("kubernetes.parent_fqcn", "must be a non-blank string")
        request_timeout = data.get("request_timeout", d.request_timeout)
        if not _number(request_timeout) or request_timeout <= 0:
            raise InvalidJobSpec("kubernetes.request_timeout", "must be a positive number of seconds")
        return cls(
            config_file_path=path, namespace=namespace, timeout=timeout, pending_timeout=pending,
            default_python_path=python_path, security_context=dict(security_context),
            ephemeral_storage=storage, workspace_mount_path=mount.rstrip("/") or "/",
            image_pull_secrets=tuple(secrets), startup_dir=startup_dir, parent_fqcn=fqcn,
            request_timeout=request_timeout,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["security_context"] = dict(self.security_context)
        data["image_pull_secrets"] = list(self.image_pull_secrets)
        return data


class KubeApiError(BackendError):
    """An API call answered with an HTTP error; `status` lets callers treat 404/409 as outcomes."""

    def __init__(self, message: str, *, status: int, retryable: bool = False):
        super().__init__(message, retryable=retryable)
        self.status = status


def _quantity(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if _number(value) and value >= 0:
        return str(value) if value else None
    if isinstance(value, str) and km.is_quantity(value):
        return value
    raise InvalidJobSpec(field_name, f"must be a Kubernetes quantity such as '500m', '2' or '4Gi', got {value!r}")


class KubernetesBackend(Backend):
    kind = "kubernetes"
    watch_timeout = 60  # server-side watch timeout: silent watches are restarted at least this often
    poll_interval = 0.2  # how often stream() checks `stop` and due pending timers

    def __init__(
        self,
        *,
        site: str,
        config: KubernetesSiteConfig,
        allowed_data_roots: tuple[str, ...] = (),
        clock: Callable[[], float] = time.monotonic,
    ):
        self.site = site
        self.config = config
        self.allowed_data_roots = allowed_data_roots  # host paths: unused, datasets are PVC claims here
        self.clock = clock
        self._lock = threading.RLock()
        self._api_client: client.ApiClient | None = None
        self._verdicts: dict[str, Observation] = {}  # sticky terminal observations, by pod
        self._timers: dict[str, PendingTimer] = {}  # wait-for-resources timers
        self._first_seen: dict[str, float] = {}  # for the site start timeout
        self._job_pks: dict[str, str | None] = {}
        self._selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SITE}={km.label_value(site)}"
        self._pod_suffix = "-" + km.site_label(site, km.POD_SUFFIX_MAX)

    # -- prepare ------------------------------------------------------------------------------

    def prepare(self, request: JobRequest) -> LaunchSpec:
        return prepare_spec(self.site, self.config, request)

    # -- API plumbing -------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client())

    def _client(self) -> client.ApiClient:
        with self._lock:
            if self._api_client is None:
                cfg = client.Configuration()
                try:
                    if self.config.config_file_path:
                        kube_config.load_kube_config(
                            config_file=self.config.config_file_path, client_configuration=cfg, persist_config=False)
                    else:
                        kube_config.load_incluster_config(client_configuration=cfg)
                except (ConfigException, OSError) as exc:
                    where = self.config.config_file_path or "the in-cluster service account"
                    raise BackendError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc
                cfg.retries = 0  # callers retry retryable errors with backoff; a blind re-POST could duplicate
                self._api_client = client.ApiClient(cfg)
            return self._api_client

    def _call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, raw: bool = False,
              **kwargs: Any) -> Any:
        """Run one API call with a timeout; map failures to BackendError. Returns parsed JSON
        (or the decoded text when `raw`)."""
        kwargs.setdefault("_request_timeout", self.config.request_timeout)
        kwargs["_preload_content"] = False
        try:
            resp = fn(*args, **kwargs)
            data = resp.data
        except ApiException as exc:
            raise self._api_error(exc, verb, resource) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendError(f"Kubernetes API unreachable ({verb} {resource}): {exc}", retryable=True) from exc
        except ValueError as exc:  # the client's model validation (pydantic) refused the body
            raise BackendError(f"invalid {resource} object for the Kubernetes API: {exc}") from exc
        if raw:
            return (data or b"").decode("utf-8", "replace")
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace")

    def _api_error(self, exc: ApiException, verb: str, resource: str) -> KubeApiError:
        status = exc.status or 0
        detail = _status_message(exc)
        if status == 401:
            msg = ("Kubernetes API rejected the launcher's credentials (401 Unauthorized): "
                   f"check the token or certificate in {self.config.config_file_path or 'the service account'}")
        elif status == 403:
            msg = (f"Kubernetes RBAC: the launcher may not {verb} {resource} in namespace {self.namespace!r}; "
                   f"grant verb {verb!r} on {resource!r} in its Role (see docs/kubernetes-rbac.yaml). {detail}")
        else:
            msg = f"Kubernetes API error {status} on {verb} {resource}: {detail}"
        return KubeApiError(msg, status=status, retryable=status == 429 or status >= 500 or status == 0)

    def _delete(self, resource: str, name: str, *, grace: int | None = None) -> bool:
        """Delete and report whether it existed; 404 is success."""
        core = self._core()
        fn = core.delete_namespaced_pod if resource == "pods" else core.delete_namespaced_secret
        kwargs = {} if grace is None else {"grace_period_seconds": grace}
        try:
            self._call("delete", resource, fn, name, self.namespace, **kwargs)
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise

    def _delete_credentials(self, pod: str) -> None:
        try:
            self._delete("secrets", km.credential_secret_name(pod))
        except BackendError as exc:  # the ownerReference still collects it with the pod
            log.warning("could not delete credential Secret of %s: %s", pod, exc)

    def _read_pod(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("get", "pods", self._core().read_namespaced_pod, name, self.namespace)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _events_for(self, pod: str) -> list[dict[str, Any]] | None:
        try:
            data = self._call("list", "events", self._core().list_namespaced_event, self.namespace,
                              field_selector=f"involvedObject.name={pod}")
        except BackendError as exc:
            log.warning("cannot read events of pod %s: %s", pod, exc)
            return None
        return list(data.get("items") or [])

    # -- launch -------------------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Handle:
        """Upsert the startup-kit and credential Secrets, create the pod (adopting a same-job pod on
        409), then make the pod own the credential Secret. Raises BackendError; never leaves a
        credential Secret behind without a pod."""
        core = self._core()
        pod_manifest = spec.options["pod"]
        name = spec.name
        if self.config.startup_dir:
            self._upsert_secret(km.startup_secret(
                name=spec.options["startup_secret"], namespace=self.namespace, labels=spec.labels,
                files=read_startup_kit(self.config.startup_dir)))
        cred_name = spec.options["credential_secret"]["name"]
        if spec.credentials:
            self._upsert_secret(km.credential_secret(
                name=cred_name, namespace=self.namespace, labels=spec.labels, values=spec.credentials))
        try:
            created = self._call("create", "pods", core.create_namespaced_pod, self.namespace, pod_manifest)
        except KubeApiError as exc:
            if exc.status != 409:
                self._delete_credentials(name)
                raise
            created = self._read_pod(name)
            if created is None or not _same_job(created, spec.labels):
                raise BackendError(
                    f"pod {name} already exists in namespace {self.namespace} and belongs to another job") from exc
            log.info("pod %s already exists for this job: adopted", name)
        except BackendError:
            self._delete_credentials(name)
            raise
        with self._lock:
            self._first_seen.setdefault(name, self.clock())
            self._job_pks[name] = spec.job_pk
        uid = (created.get("metadata") or {}).get("uid")
        if spec.credentials and uid:
            try:
                self._call("patch", "secrets", core.patch_namespaced_secret, cred_name, self.namespace,
                           km.owner_reference_patch(pod=name, uid=uid))
            except BackendError as exc:
                log.warning("could not make pod %s own Secret %s: %s", name, cred_name, exc)
        return Handle(self.kind, name)

    def _upsert_secret(self, body: dict[str, Any]) -> None:
        core, name = self._core(), body["metadata"]["name"]
        try:
            self._call("create", "secrets", core.create_namespaced_secret, self.namespace, body)
            return
        except KubeApiError as exc:
            if exc.status != 409:
                raise
        try:
            self._call("update", "secrets", core.replace_namespaced_secret, name, self.namespace, body)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            self._call("create", "secrets", core.create_namespaced_secret, self.namespace, body)

    # -- observe ------------------------------------------------------------------------------

    def inspect(self, handle: Handle) -> Observation:
        """Current state, with §4.8 applied to pending pods (a failed pending pod is deleted and
        reported FAILED/101). Terminal answers are cached and repeated. Raises BackendError when
        the API cannot be read (the pending timer is paused meanwhile)."""
        name = handle.ref
        with self._lock:
            if name in self._verdicts:
                return self._verdicts[name]
        try:
            pod = self._read_pod(name)
        except BackendError:
            self._pause_timer(name)
            raise
        if pod is None:
            return self._finish(name, None, Observation(
                ref=name, job_pk=self._job_pks.get(name), state=JobState.LOST, return_code=ReturnCode.ABORTED,
                reason="vanished", message=f"pod {name} no longer exists"))
        return self._observe(pod)

    def _observe(self, pod: dict[str, Any], *, deleted: bool = False) -> Observation:
        name = pod["metadata"]["name"]
        with self._lock:
            if name in self._verdicts:
                return self._verdicts[name]
            self._job_pks[name] = (pod["metadata"].get("labels") or {}).get(LABEL_JOB_PK)
        obs = pod_observation(pod)
        if obs.state.is_terminal:
            return self._finish(name, pod, obs)
        if deleted:
            return self._finish(name, None, Observation(
                ref=name, job_pk=obs.job_pk, state=JobState.LOST, return_code=ReturnCode.ABORTED,
                reason="vanished", message=f"pod {name} was deleted while {obs.state.value}"))
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Pending", "Unknown"):
            self._drop_timer(name)
            return obs
        verdict = classify_pending(pod, lambda: self._events_for(name), time.time())
        now = self.clock()
        with self._lock:
            first = self._first_seen.setdefault(name, now)
        if verdict.action == "fail":
            return self._fail_pending(pod, verdict.reason, verdict.message)
        if verdict.action == "wait_resources":
            timer = self._timers.setdefault(name, PendingTimer(now))
            elapsed = timer.elapsed(now)
            limit = self._pending_timeout(pod)
            if limit is not None and elapsed >= limit:
                return self._fail_pending(pod, verdict.reason, f"no resources after {elapsed:.0f}s "
                                          f"(pending_timeout {limit:g}s): {verdict.message}")
        elif verdict.action == "pause":
            self._pause_timer(name)
        else:
            self._drop_timer(name)
        if self.config.timeout is not None and phase == "Pending" and now - first >= self.config.timeout:
            return self._fail_pending(pod, "StartTimeout",
                                      f"pod not running after {now - first:.0f}s (site timeout {self.config.timeout:g}s)")
        return Observation(ref=name, job_pk=obs.job_pk, state=JobState.STARTING,
                           reason=verdict.reason or obs.reason, message=verdict.message or obs.message)

    def _pending_timeout(self, pod: dict[str, Any]) -> float | None:
        annotations = pod["metadata"].get("annotations") or {}
        raw = annotations.get(km.PENDING_TIMEOUT_ANNOTATION)
        if raw is None:
            return self.config.pending_timeout
        return None if raw == "none" else float(raw)

    def _fail_pending(self, pod: dict[str, Any], reason: str, message: str) -> Observation:
        """§4.8 fail: delete the pod at once (grace 0) and report 101."""
        name = pod["metadata"]["name"]
        tail = self._logs_tail(pod)
        try:
            self._delete("pods", name, grace=0)
        except BackendError as exc:
            log.warning("could not delete failed pending pod %s: %s", name, exc)
        obs = Observation(ref=name, job_pk=(pod["metadata"].get("labels") or {}).get(LABEL_JOB_PK),
                          state=JobState.FAILED, return_code=ReturnCode.EXCEPTION, reason=reason,
                          message=f"{reason}: {message}" if message else reason, logs_tail=tail)
        return self._finish(name, None, obs)

    def _finish(self, name: str, pod: dict[str, Any] | None, obs: Observation) -> Observation:
        """First terminal sighting: keep the logs tail, drop the credential Secret, cache the answer."""
        if obs.logs_tail is None and pod is not None:
            obs = _replace(obs, logs_tail=self._logs_tail(pod))
        self._delete_credentials(name)
        with self._lock:
            self._verdicts[name] = obs
            self._timers.pop(name, None)
            self._first_seen.pop(name, None)
        return obs

    def _drop_timer(self, name: str) -> None:
        with self._lock:
            self._timers.pop(name, None)

    def _pause_timer(self, name: str) -> None:
        with self._lock:
            timer = self._timers.get(name)
            if timer:
                timer.pause(self.clock())

    def list_managed(self) -> list[Observation]:
        data = self._call("list", "pods", self._core().list_namespaced_pod, self.namespace,
                          label_selector=self._selector)
        result = []
        for pod in data.get("items") or []:
            name = pod["metadata"]["name"]
            with self._lock:
                cached = self._verdicts.get(name)
            result.append(cached or pod_observation(pod))
        return result

    # -- stop, logs, cleanup ------------------------------------------------------------------

    def terminate(self, handle: Handle) -> Observation:
        """Delete the pod (grace 0) and its credential Secret. A pod that already ended keeps its
        code; otherwise ABORTED/9. Idempotent: a missing pod is fine."""
        name = handle.ref
        pod = self._read_pod(name)
        with self._lock:
            cached = self._verdicts.get(name)
        if cached is not None:
            obs = cached
        elif pod is not None and pod_observation(pod).state.is_terminal:
            obs = pod_observation(pod)
        else:
            obs = Observation(ref=name, job_pk=self._job_pks.get(name), state=JobState.ABORTED,
                              return_code=ReturnCode.ABORTED, reason="terminated",
                              message="terminated by the launcher" if pod else f"pod {name} was already gone")
        if pod is not None and obs.logs_tail is None:
            obs = _replace(obs, logs_tail=self._logs_tail(pod))
        if pod is not None:
            self._delete("pods", name, grace=0)
        return self._finish(name, None, obs)

    def logs(self, handle: Handle, *, tail: int = LOGS_TAIL) -> str:
        pod = self._read_pod(handle.ref)
        return self._logs_tail(pod, tail=tail, quiet=False) if pod else ""

    def _logs_tail(self, pod: dict[str, Any], *, tail: int = LOGS_TAIL, quiet: bool = True) -> str:
        name = pod["metadata"]["name"]
        kwargs: dict[str, Any] = {"tail_lines": tail}
        container = (pod["metadata"].get("annotations") or {}).get(km.MAIN_CONTAINER_ANNOTATION)
        if container:
            kwargs["container"] = container
        try:
            text = self._call("get", "pods/log", self._core().read_namespaced_pod_log, name, self.namespace,
                              raw=True, **kwargs)
        except KubeApiError as exc:
            if quiet or exc.status in (400, 404):  # 400: container not started yet
                return ""
            raise
        except BackendError:
            if quiet:
                return ""
            raise
        return text

    def cleanup(self, handle: Handle) -> None:
        """Delete a finished pod and its credential Secret (after the job record is complete).
        Refuses a pod that is still starting or running: terminate it first."""
        name = handle.ref
        pod = self._read_pod(name)
        with self._lock:
            finished = name in self._verdicts
        if pod is not None:
            if not finished and not pod_observation(pod).state.is_terminal:
                raise BackendError(f"pod {name} has not finished; terminate it before cleanup")
            self._delete("pods", name)
        try:
            self._delete("secrets", km.credential_secret_name(name))
        finally:
            with self._lock:
                for store in (self._verdicts, self._timers, self._first_seen, self._job_pks):
                    store.pop(name, None)

    # -- stream -------------------------------------------------------------------------------

    def stream(self, stop: threading.Event) -> Iterator[Observation]:
        """Watch this site's pods and the Warning events about them. Resumes after disconnects from
        the last resourceVersion, relists on 410 Gone, restarts silent watches every
        `watch_timeout` seconds and re-checks pods whose pending timer is running. Returns within
        about `poll_interval` of `stop` being set; raises BackendError(retryable=True) when the API
        cannot be reached."""
        inbox: queue.Queue = queue.Queue()
        halt = threading.Event()
        core = self._core()
        feeds = [
            WatchFeed("pods", core.list_namespaced_pod, self, inbox, halt, label_selector=self._selector),
            WatchFeed("events", core.list_namespaced_event, self, inbox, halt,
                      field_selector="type=Warning,involvedObject.kind=Pod"),
        ]
        seen_events: set[str] = set()
        for feed in feeds:
            feed.start()
        try:
            while not stop.is_set():
                try:
                    kind, event_type, obj = inbox.get(timeout=self.poll_interval)
                except queue.Empty:
                    yield from self._due_timers()
                    continue
                if kind == "error":
                    raise obj
                if kind == "pods":
                    yield self._observe(obj, deleted=event_type == "DELETED")
                elif kind == "events":
                    obs = self._event_observation(obj)
                    if obs is not None and obs.event_id not in seen_events:
                        seen_events.add(obs.event_id or "")
                        yield obs
        finally:
            halt.set()
            for feed in feeds:
                feed.close()

    def _due_timers(self) -> Iterator[Observation]:
        with self._lock:
            names = list(self._timers)
        for name in names:
            timer = self._timers.get(name)
            if timer is None or timer.paused_at is not None:
                continue
            try:
                obs = self.inspect(Handle(self.kind, name))
            except BackendError:
                continue
            if obs.state.is_terminal:
                yield obs

    def _event_observation(self, event: dict[str, Any]) -> Observation | None:
        involved = event.get("involvedObject") or {}
        name = involved.get("name") or ""
        if event.get("type") != "Warning" or not name.endswith(self._pod_suffix):
            return None
        meta = event.get("metadata") or {}
        with self._lock:
            state = (self._verdicts[name].state if name in self._verdicts else JobState.STARTING)
            job_pk = self._job_pks.get(name)
        return Observation(ref=name, job_pk=job_pk, state=state, kind="event", reason=event.get("reason") or "",
                           message=event.get("message") or "", at=event_time(event),
                           event_id=f"{meta.get('uid')}:{event.get('count') or 1}:{meta.get('resourceVersion')}")

    # -- check --------------------------------------------------------------------------------

    def check_connection(self) -> list[CheckResult]:
        """API reachable, namespace readable, and one SelfSubjectAccessReview per needed permission."""
        try:
            version = self._call("get", "version", client.VersionApi(self._client()).get_code)
        except BackendError as exc:
            return [CheckResult(name="api", ok=False, detail=str(exc))]
        host = self._client().configuration.host
        results = [CheckResult(name="api", ok=True, detail=f"Kubernetes {version.get('gitVersion', '?')} at {host}")]
        try:
            self._call("list", "pods", self._core().list_namespaced_pod, self.namespace, limit=1)
            results.append(CheckResult(name="namespace", ok=True, detail=f"namespace {self.namespace!r} readable"))
        except BackendError as exc:
            results.append(CheckResult(name="namespace", ok=False, detail=str(exc)))
        authz = client.AuthorizationV1Api(self._client())
        for verb, resource, sub in RBAC_NEEDS:
            label = f"{resource}/{sub}" if sub else resource
            attrs = {"namespace": self.namespace, "verb": verb, "resource": resource}
            if sub:
                attrs["subresource"] = sub
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attrs}}
            try:
                review = self._call("create", "selfsubjectaccessreviews",
                                    authz.create_self_subject_access_review, body)
                allowed = bool((review.get("status") or {}).get("allowed"))
                detail = "allowed" if allowed else (
                    f"missing permission: {verb} {label} in namespace {self.namespace!r} "
                    "(see docs/kubernetes-rbac.yaml)")
            except BackendError as exc:
                allowed, detail = False, f"cannot check {verb} {label}: {exc}"
            results.append(CheckResult(name=f"rbac {verb} {label}", ok=allowed, detail=detail))
        return results


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def pod_observation(pod: Mapping[str, Any]) -> Observation:
    """§4.9 without side effects: phase -> state and NVFlare return code."""
    meta, status = pod.get("metadata") or {}, pod.get("status") or {}
    name = meta.get("name", "")
    job_pk = (meta.get("labels") or {}).get(LABEL_JOB_PK)
    phase = status.get("phase") or "Pending"
    main = main_container_status(pod)
    terminated = ((main or {}).get("state") or {}).get("terminated") or {}
    waiting = ((main or {}).get("state") or {}).get("waiting") or {}
    exit_code = terminated.get("exitCode")
    if phase == "Succeeded":
        return Observation(ref=name, job_pk=job_pk, state=JobState.SUCCEEDED, exit_code=exit_code,
                           return_code=ReturnCode.SUCCESS, reason=terminated.get("reason") or "Completed")
    if phase == "Failed":
        code = exit_code if exit_code in (101, 102, 103) else ReturnCode.ABORTED
        reason = terminated.get("reason") or status.get("reason") or "Failed"
        message = terminated.get("message") or status.get("message") or f"main container exited with {exit_code}"
        return Observation(ref=name, job_pk=job_pk, state=JobState.FAILED, exit_code=exit_code,
                           return_code=int(code), reason=reason, message=message)
    if phase == "Running":
        return Observation(ref=name, job_pk=job_pk, state=JobState.RUNNING)
    return Observation(ref=name, job_pk=job_pk, state=JobState.STARTING, reason=waiting.get("reason") or phase,
                       message=waiting.get("message") or "")


def _same_job(pod: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    found = (pod.get("metadata") or {}).get("labels") or {}
    return all(found.get(k) == labels.get(k) for k in (LABEL_SITE, LABEL_JOB_PK))


def _replace(obs: Observation, **changes: Any) -> Observation:
    from dataclasses import replace

    return replace(obs, **changes)


def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        return json.loads(body).get("message") or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(body or exc.reason or "")


def read_startup_kit(directory: str) -> dict[str, bytes]:
    """The regular files directly in `directory` whose names end in .crt/.key/.pem/.json (§4.4)."""
    files: dict[str, bytes] = {}
    try:
        entries = list(os.scandir(directory))
    except OSError as exc:
        raise BackendError(f"cannot read the startup kit {directory}: {exc}") from exc
    for entry in entries:
        if entry.name.endswith(km.STARTUP_KIT_SUFFIXES) and entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as f:
                files[entry.name] = f.read()
    return files


def shutdown_response(resp: Any, *, close: bool = True) -> None:
    """Unblock a thread reading a watch response (the client's own Watch.stop does the same).
    Closing from another thread would wait for the reader's buffer lock, hence `close=False`."""
    try:
        sock = getattr(getattr(resp, "connection", None), "sock", None)
        if sock:
            sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    if not close:
        return
    try:
        resp.close()
    except Exception:  # noqa: BLE001 - closing a half-dead response must never raise
        pass


# ---------------------------------------------------------------------------------------------
# prepare: job meta -> LaunchSpec (pure)
# ---------------------------------------------------------------------------------------------

PORTABLE_CONFLICTS = {"num_of_cpus": ("cpu", "cpu_request"), "memory": ("memory", "memory_request"),
                      "num_of_gpus": ("num_of_gpus",)}
CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def prepare_spec(site: str, config: KubernetesSiteConfig, request: JobRequest) -> LaunchSpec:
    """Validate `request` against §4 (stricter where the doc says "dashboard:") and resolve the
    pod manifest. Raises InvalidJobSpec naming the field. No API calls."""
    job_id = nvflare.check_job_id(request.job_id)
    if request.role not in nvflare.ROLES:
        raise InvalidJobSpec("role", f"must be one of {', '.join(nvflare.ROLES)}")
    base = f"job_meta.launcher_spec.{site}.k8s"
    options = nvflare.resolve_launcher_spec(request.job_meta, site, "k8s")
    for key in options:
        if key not in JOB_KEYS:
            raise InvalidJobSpec(f"{base}.{key}", f"unsupported job-controlled Kubernetes option {key!r}; "
                                                  f"allowed: {', '.join(JOB_KEYS)}")
    portable = nvflare.portable_resources(request.job_meta, site)
    for portable_key, natives in PORTABLE_CONFLICTS.items():
        for native in natives:
            if portable_key in portable and native in options:
                raise InvalidJobSpec(f"{base}.{native}",
                                     f"conflicts with resource_spec {portable_key}: set only one of them")

    job_image = nvflare.check_image(options.get("image"), f"{base}.image")
    python_path = config.default_python_path
    if "python_path" in options:
        python_path = nvflare.check_python_path(options["python_path"], f"{base}.python_path")
    # As NVFlare's launchers (and the Docker backend): image/python_path BYOC is authorised when the
    # FL server deploys the job, not re-checked here (launch-semantics.md §1.4).
    study = request.study
    image = nvflare.resolve_image(job_image, study.image if study else None, job_id=job_id, site=site)

    gpus = portable.get("num_of_gpus", 0)
    if "num_of_gpus" in options:
        gpus = nvflare.check_int(options["num_of_gpus"], f"{base}.num_of_gpus", minimum=0)
    quantities = {key: _quantity(options.get(key), f"{base}.{key}")
                  for key in ("cpu", "cpu_request", "memory", "memory_request")}
    if "num_of_cpus" in portable:
        quantities["cpu"] = quantities["cpu_request"] = str(portable["num_of_cpus"])
    if "memory" in portable:
        quantities["memory"] = quantities["memory_request"] = portable["memory"]
    storage = options.get("ephemeral_storage")
    if storage is None:
        storage = config.ephemeral_storage
    elif not isinstance(storage, str) or not km.is_quantity(storage):
        raise InvalidJobSpec(f"{base}.ephemeral_storage", f"must be a quantity such as '2Gi', got {storage!r}")
    pending_timeout = _job_pending_timeout(options, config, f"{base}.pending_timeout")

    args = nvflare.normalise_job_args(request.job_args)
    argv = nvflare.render_command(python_path, request.role, args, nvflare.check_set_options(request.set_options))
    credentials = nvflare.credential_env(args)

    env: dict[str, str] = {}
    for key, value in (study.env if study else {}).items():
        if key in LAUNCHER_OWNED_ENV:
            raise InvalidJobSpec(f"study.{study.name}.env.{key}", "launcher-owned environment variable")
        env[key] = str(value)
    mount = config.workspace_mount_path
    env["PYTHONPATH"] = f"{mount}/{job_id}/app_{site}/custom"
    env[km.OWNER_FQCN_ENV] = config.parent_fqcn or site
    datasets = tuple(study.datasets) if study else ()
    for ds in datasets:
        path = f"study.{ds.study}.datasets.{ds.name}"
        if not isinstance(ds.source, str) or not CLAIM_RE.match(ds.source):
            raise InvalidJobSpec(f"{path}.source", f"must be a PersistentVolumeClaim name, got {ds.source!r}")
        if ds.mode not in ("ro", "rw"):
            raise InvalidJobSpec(f"{path}.mode", "must be 'ro' or 'rw'")

    name = km.pod_name(job_id, site)
    cred_name = km.credential_secret_name(name)
    labels = km.sanitise_labels(nvflare_labels(site, request))
    startup = km.startup_secret_name(site)
    pod = km.build_pod(km.PodInputs(
        name=name, namespace=config.namespace, container=km.container_name(job_id), image=image,
        command=argv, labels=labels, env=env, credential_env=tuple(credentials), credential_secret=cred_name,
        datasets=datasets, resources=km.resources_for(**quantities, gpus=gpus, ephemeral_storage=storage),
        image_pull_secrets=config.image_pull_secrets, security_context=config.security_context,
        ephemeral_storage=storage, workspace_mount_path=mount, startup_secret=startup,
        pending_timeout=pending_timeout,
    ))
    warnings: list[str] = []
    if study is not None and study.pod_template is not None:
        field_name = f"study.{study.name}.pod_template"
        pod, warnings = km.merge_pod_template(study.pod_template, pod, field_name=field_name)
        try:
            client.V1Pod.model_validate(pod)  # the client refuses unknown fields: say so now, not at launch
        except ValueError as exc:
            raise InvalidJobSpec(field_name, f"not a valid Pod: {exc}") from exc
        for warning in warnings:
            log.warning("site %s job %s: %s", site, job_id, warning)
    return LaunchSpec(
        backend=KubernetesBackend.kind, site=site, job_pk=request.job_pk, job_id=job_id, role=request.role,
        name=name, image=image, command=tuple(argv), env=env, credentials=credentials, labels=labels,
        study=study.name if study else None, datasets=datasets, workdir=mount,
        options={
            "namespace": config.namespace,
            "pod": pod,
            "container": km.container_name(job_id),
            "credential_secret": {"name": cred_name, "keys": list(credentials)},
            "startup_secret": startup,
            "pending_timeout": pending_timeout,
            "timeout": config.timeout,
            "warnings": warnings,
        },
    )


def nvflare_labels(site: str, request: JobRequest) -> dict[str, str]:
    from backends.base import labels_for

    return labels_for(site=site, job_pk=request.job_pk, job_id=request.job_id,
                      study=request.study.name if request.study else None)


def _job_pending_timeout(options: Mapping[str, Any], config: KubernetesSiteConfig, field_name: str) -> float | None:
    """A job may shorten the site's pending_timeout, never lengthen or disable it."""
    site_value = config.pending_timeout
    if "pending_timeout" not in options:
        return site_value
    value = options["pending_timeout"]
    if value is None:
        if site_value is not None:
            raise InvalidJobSpec(field_name, f"may not disable the site's pending_timeout of {site_value:g}s")
        return None
    if not _number(value) or value < 0:
        raise InvalidJobSpec(field_name, f"must be a non-negative number of seconds, got {value!r}")
    if site_value is not None and value > site_value:
        raise InvalidJobSpec(field_name, f"may only shorten the site's pending_timeout of {site_value:g}s")
    return value


# ---------------------------------------------------------------------------------------------
# Pending-pod classification (§4.8), pure over the API's JSON
# ---------------------------------------------------------------------------------------------

FAIL_FAST_WAITING_REASONS = frozenset({
    "CreateContainerConfigError", "CreateContainerError", "ErrImagePull", "ErrImageNeverPull",
    "ImagePullBackOff", "InvalidImageName", "RunContainerError", "CrashLoopBackOff",
})
SCHEDULED_EVENT_FAILURE_REASONS = frozenset({
    "BackOff", "Failed", "FailedAttachVolume", "FailedCreatePodSandBox", "FailedMount", "FailedSync",
    "InspectFailed", "InvalidImageName", "NetworkNotReady",
})
SCHEDULED_EVENT_FAILURE_MAX_AGE = 60  # seconds
SHORTAGE_RE = re.compile(r"\binsufficient\s+([a-z0-9./_-]+)", re.IGNORECASE)


@dataclass(frozen=True)
class PendingVerdict:
    action: str  # "wait" | "wait_resources" | "pause" | "fail"
    reason: str = ""
    message: str = ""


class PendingTimer:
    """Wait-for-resources clock; paused time (pod unreadable, events unreadable) is not counted."""

    def __init__(self, started: float):
        self.started = started
        self.paused_at: float | None = None
        self.paused_total = 0.0

    def pause(self, now: float) -> None:
        if self.paused_at is None:
            self.paused_at = now

    def elapsed(self, now: float) -> float:
        if self.paused_at is not None:
            self.paused_total += now - self.paused_at
            self.paused_at = None
        return now - self.started - self.paused_total


def is_shortage(text: str) -> bool:
    for match in SHORTAGE_RE.finditer(text or ""):
        resource = match.group(1).rstrip(".,;:").lower()
        if resource in ("cpu", "memory") or "gpu" in resource:
            return True
    return False


def parse_time(value: Any) -> float | None:
    if not isinstance(value, str) or not value:
        return None
    from datetime import datetime

    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def event_time(event: Mapping[str, Any]) -> float | None:
    for value in (event.get("eventTime"), (event.get("series") or {}).get("lastObservedTime"),
                  event.get("lastTimestamp"), event.get("firstTimestamp"),
                  (event.get("metadata") or {}).get("creationTimestamp")):
        when = parse_time(value)
        if when is not None:
            return when
    return None


def main_container_status(pod: Mapping[str, Any]) -> dict[str, Any] | None:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    wanted = ((pod.get("metadata") or {}).get("annotations") or {}).get(km.MAIN_CONTAINER_ANNOTATION)
    for status in statuses:
        if status.get("name") == wanted:
            return status
    return statuses[0] if statuses else None


def _warning_events_newest_first(events: list[dict[str, Any]]) -> list[tuple[float | None, dict[str, Any]]]:
    timed = [(event_time(e), e) for e in events if e.get("type") == "Warning"]
    return sorted(timed, key=lambda pair: pair[0] if pair[0] is not None else float("-inf"), reverse=True)


def classify_pending(
    pod: Mapping[str, Any], events: Callable[[], list[dict[str, Any]] | None], now: float
) -> PendingVerdict:
    """NVFlare's pending rules. `events()` lists the pod's events (None when the query failed);
    it is only called when the pod's own status does not decide. `now` is wall-clock seconds."""
    status = pod.get("status") or {}
    phase = status.get("phase")
    if phase == "Unknown":
        return PendingVerdict("fail", "Unknown", "pod phase is Unknown (the node stopped reporting)")
    if phase != "Pending":
        return PendingVerdict("wait")
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    scheduled_cond = conditions.get("PodScheduled") or {}
    scheduled = bool((pod.get("spec") or {}).get("nodeName") or status.get("nodeName")
                     or scheduled_cond.get("status") == "True")
    if scheduled:
        for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAIL_FAST_WAITING_REASONS:
                return PendingVerdict("fail", waiting["reason"], waiting.get("message") or "")
        for when, event in _warning_events_newest_first(events() or []):
            if when is None:
                continue
            if event.get("reason") in SCHEDULED_EVENT_FAILURE_REASONS:
                if now - when <= SCHEDULED_EVENT_FAILURE_MAX_AGE:
                    return PendingVerdict("fail", event["reason"], event.get("message") or "")
                break
        return PendingVerdict("wait")
    if scheduled_cond.get("status") == "False":
        reason, message = scheduled_cond.get("reason") or "", scheduled_cond.get("message") or ""
        if is_shortage(f"{reason} {message}"):
            return PendingVerdict("wait_resources", reason or "Insufficient", message)
        if reason == "Unschedulable":
            return PendingVerdict("fail", reason, message)
    found = events()
    if found is None:
        return PendingVerdict("pause")
    for _when, event in _warning_events_newest_first(found):
        reason, message = event.get("reason") or "", event.get("message") or ""
        if is_shortage(f"{reason} {message}"):
            return PendingVerdict("wait_resources", reason, message)
        if reason == "FailedScheduling" or reason in SCHEDULED_EVENT_FAILURE_REASONS:
            return PendingVerdict("fail", reason, message)
    return PendingVerdict("wait")


# ---------------------------------------------------------------------------------------------
# Watch feeds for stream()
# ---------------------------------------------------------------------------------------------


class WatchFeed(threading.Thread):
    """List then watch one resource from the last resourceVersion, forever, into `inbox`.

    The client's own Watch retries a 410 only once; here every 410 (HTTP or ERROR event) relists,
    and every dropped or timed-out watch resumes from the last resourceVersion seen."""

    def __init__(self, kind: str, list_fn: Callable[..., Any], backend: KubernetesBackend,
                 inbox: queue.Queue, halt: threading.Event, **selectors: str):
        super().__init__(daemon=True, name=f"k8s-watch-{kind}")
        self.kind, self.list_fn, self.backend, self.inbox, self.halt = kind, list_fn, backend, inbox, halt
        self.selectors = selectors
        self.resource_version: str | None = None
        self.resp: Any = None
        self.relists = 0

    def run(self) -> None:
        try:
            self._run()
        except BackendError as exc:
            if not self.halt.is_set():
                self.inbox.put(("error", None, exc))
        except Exception as exc:  # noqa: BLE001 - never die silently: the consumer must learn of it
            if not self.halt.is_set():
                self.inbox.put(("error", None, BackendError(f"watch of {self.kind} failed: {exc}", retryable=True)))

    def _run(self) -> None:
        b = self.backend
        while not self.halt.is_set():
            if self.resource_version is None:
                listing = b._call("list", self.kind, self.list_fn, b.namespace, **self.selectors)
                self.relists += 1
                self.resource_version = (listing.get("metadata") or {}).get("resourceVersion") or "0"
                for item in listing.get("items") or []:
                    self.inbox.put((self.kind, "SYNC", item))
            try:
                resp = self.list_fn(
                    b.namespace, watch=True, resource_version=self.resource_version,
                    allow_watch_bookmarks=True, timeout_seconds=b.watch_timeout, _preload_content=False,
                    _request_timeout=(b.config.request_timeout, b.watch_timeout + b.config.request_timeout),
                    **self.selectors)
            except ApiException as exc:
                if exc.status == 410:
                    self.resource_version = None
                    continue
                raise b._api_error(exc, "watch", self.kind) from exc
            except (urllib3.exceptions.HTTPError, OSError) as exc:
                raise BackendError(f"Kubernetes API unreachable (watch {self.kind}): {exc}", retryable=True) from exc
            self.resp = resp
            try:
                self._consume(resp)
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as exc:
                if self.halt.is_set():
                    return
                log.info("watch of %s dropped (%s); resuming from %s", self.kind, exc, self.resource_version)
                self.halt.wait(0.05)  # no hot loop against a flapping server
            finally:
                self.resp = None
                shutdown_response(resp)

    def _consume(self, resp: Any) -> None:
        for line in iter_resp_lines(resp):
            if self.halt.is_set():
                return
            if not line.strip():
                continue
            event = json.loads(line)
            etype, obj = event.get("type"), event.get("object") or {}
            if etype == "ERROR":
                # 410 Gone (resourceVersion too old) or any other watch error: start over from a list.
                log.info("watch of %s: %s; relisting", self.kind, obj.get("message") or obj.get("reason"))
                self.resource_version = None
                return
            rv = (obj.get("metadata") or {}).get("resourceVersion")
            if rv:
                self.resource_version = rv
            if etype in ("ADDED", "MODIFIED", "DELETED"):
                self.inbox.put((self.kind, etype, obj))

    def close(self) -> None:
        """Unblock the reader at once; the feed thread closes the response itself."""
        resp = self.resp
        if resp is not None:
            shutdown_response(resp, close=False)
