"""Kubernetes backend: each NVFlare job is one bare Pod (launch-semantics.md §4).

Manifests come from the pure builders in `k8s_manifests.py`; this module sends them and reads the
replies, always as JSON dicts (`_preload_content=False`), with an explicit timeout on every call.
Pending pods are classified exactly as NVFlare does (§4.8). Timers for pending pods and the site
start timeout live in this instance's memory: they restart from zero after a process restart (the
pod is then judged again from its first observation by the new process).

Module layout: `k8s_config.py` (site configuration and prepare), `k8s_manifests.py` (pure manifest
builders), `k8s_pending.py` (pure §4.8 classification and timers), `k8s_api.py` (client and calls)
and `k8s_watch.py` (the change streams behind stream()).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes import client

from backends import k8s_manifests as km
from backends.base import (
    LABEL_JOB_PK,
    LABEL_MANAGED_BY,
    LABEL_SITE,
    MANAGED_BY,
    Backend,
    BackendError,
    Handle,
    JobRequest,
    JobState,
    LaunchSpec,
    Observation,
    ReturnCode,
)
from backends.k8s_api import LOGS_TAIL, KubeApiError, KubeApiMixin
from backends.k8s_config import BACKEND_KIND, KubernetesSiteConfig, prepare_spec
from backends.k8s_pending import PendingTimer, classify_pending, event_time, pod_observation
from backends.k8s_watch import WatchFeed
from backends.logtail import cap_tail

__all__ = ["KubernetesBackend", "KubernetesSiteConfig"]

log = logging.getLogger(__name__)


class KubernetesBackend(KubeApiMixin, Backend):
    kind = BACKEND_KIND
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

    # API plumbing (_call, _read_pod, _delete, _upsert_secret, _logs_tail...) and check_connection()
    # come from KubeApiMixin in k8s_api.py.

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
        # tail_lines bounds what the API returns; the byte cap applies after (backends.logtail)
        return cap_tail(self._logs_tail(pod, tail=tail, quiet=False), lines=tail) if pod else ""

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


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def _same_job(pod: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    found = (pod.get("metadata") or {}).get("labels") or {}
    return all(found.get(k) == labels.get(k) for k in (LABEL_SITE, LABEL_JOB_PK))


def _replace(obs: Observation, **changes: Any) -> Observation:
    from dataclasses import replace

    return replace(obs, **changes)


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
