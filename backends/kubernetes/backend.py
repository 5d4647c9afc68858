"""Kubernetes backend: each NVFlare job is one bare Pod (launch-semantics.md §4).

Specs are built by prepare.py (manifests from the pure builders in manifests.py); this module sends
them through the site's engine client (api.KubeApi: JSON dicts, an explicit timeout on every call)
and reads the replies. Pending pods are classified exactly as NVFlare does (§4.8). The clocks come
from the pod itself: the site start timeout counts from its creationTimestamp, the
wait-for-resources timer from the lastTransitionTime of its PodScheduled condition, so both survive
a restart of the launcher. The
object keeps no job state, only its API client and, per pod whose timer runs, the time the API could
not be read (§4.8 pauses the timer then); after a restart that paused time counts again.

Package layout, by seam: config.py (site settings), prepare.py, manifests.py and pod_security.py
(spec building), api.py (the engine client object), pending.py (pure §4.8 classification, pod clocks
and the pod -> Observation mapping) and watch.py (the change streams behind stream(), given that
client).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from backends.base import (
    LABEL_JOB_PK,
    LABEL_MANAGED_BY,
    LABEL_SITE,
    MANAGED_BY,
    Backend,
    BackendError,
    CheckResult,
    InvalidJobSpec,
    DatasetSpec,
    Handle,
    JobRequest,
    JobState,
    LaunchSpec,
    Observation,
    ReturnCode,
    StillRunning,
    terminated_outcome,
)
from backends.kubernetes import manifests as km
from backends.kubernetes.api import LOGS_TAIL, KubeApi, KubeApiError
from backends.kubernetes.config import KubernetesSiteConfig
from backends.kubernetes.pending import (
    PendingPause, classify_pending, event_time, pending_clock_start, pod_observation, pod_time,
)
from backends.kubernetes.prepare import BACKEND_KIND, prepare_spec
from backends.kubernetes.watch import WatchFeed
from backends.logtail import cap_tail

__all__ = ["KubernetesBackend"]

log = logging.getLogger("backends.kubernetes")  # the name log lines had before the split


class KubernetesBackend(Backend):
    kind = BACKEND_KIND
    watch_timeout = 60  # server-side watch timeout: silent watches are restarted at least this often
    poll_interval = 0.2  # how often stream() checks `stop` and due pending timers
    # Pod timestamps are wall-clock (whole seconds, from the API server): timers compare with time.time().

    def __init__(
        self,
        *,
        site: str,
        config: KubernetesSiteConfig,
        allowed_data_roots: tuple[str, ...] = (),
        clock: Callable[[], float] = time.time,
    ):
        self.site = site
        self.config = config
        self.allowed_data_roots = allowed_data_roots  # host paths: unused, datasets are PVC claims here
        self.clock = clock
        self.api = KubeApi(config)
        self._lock = threading.Lock()
        self._paused: dict[str, PendingPause] = {}  # §4.8: unreadable time of running timers, by pod
        self._selector = f"{LABEL_MANAGED_BY}={MANAGED_BY},{LABEL_SITE}={km.label_value(site)}"
        self._pod_suffix = "-" + km.site_label(site, km.POD_SUFFIX_MAX)

    # -- prepare ------------------------------------------------------------------------------

    def prepare(self, request: JobRequest) -> LaunchSpec:
        return prepare_spec(self.site, self.config, request)

    # -- launch -------------------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Handle:
        """Upsert the startup-kit and credential Secrets, create the pod (adopting a same-job pod on
        409), then make the pod own the credential Secret. A pod that mounts the startup kit is
        created only after its Secret exists (a missing one would leave it in FailedMount).
        Raises BackendError; never leaves a credential Secret behind without a pod."""
        core = self.api.core()
        pod_manifest = spec.options["pod"]
        name = spec.name
        if spec.options.get("startup_secret"):
            if not self.config.startup_dir:  # prepared before the site's startup_dir was removed
                raise InvalidJobSpec("kubernetes.startup_dir", "required: the pod mounts the startup kit Secret")
            self.api.upsert_secret(km.startup_secret(
                name=spec.options["startup_secret"], namespace=self.api.namespace, labels=spec.labels,
                files=read_startup_kit(self.config.startup_dir)))
        cred_name = spec.options["credential_secret"]["name"]
        if spec.credentials:
            self.api.upsert_secret(km.credential_secret(
                name=cred_name, namespace=self.api.namespace, labels=spec.labels, values=spec.credentials))
        try:
            created = self.api.call("create", "pods", core.create_namespaced_pod, self.api.namespace, pod_manifest)
        except KubeApiError as exc:
            if exc.status != 409:
                self.api.delete_credentials(name)
                raise
            created = self.api.read_pod(name)
            if created is None or not _same_job(created, spec.labels):
                raise BackendError(
                    f"pod {name} already exists in namespace {self.api.namespace} and belongs to another job") from exc
            log.info("pod %s already exists for this job: adopted", name)
        except BackendError:
            self.api.delete_credentials(name)
            raise
        uid = (created.get("metadata") or {}).get("uid")
        if spec.credentials and uid:
            try:
                self.api.call("patch", "secrets", core.patch_namespaced_secret, cred_name, self.api.namespace,
                           km.owner_reference_patch(pod=name, uid=uid))
            except BackendError as exc:
                log.warning("could not make pod %s own Secret %s: %s", name, cred_name, exc)
        return Handle(self.kind, name)

    # -- observe ------------------------------------------------------------------------------

    def inspect(self, handle: Handle, *, terminate_requested: bool = False) -> Observation:
        """Current state, with §4.8 applied to pending pods (a failed pending pod is deleted and
        reported FAILED/101; after that the pod is gone: the job row keeps the verdict). Raises
        BackendError when the API cannot be read (a running pending timer is paused meanwhile)."""
        obs = self._look(handle.ref)[0]
        return terminated_outcome(obs) if terminate_requested else obs

    def _look(self, name: str) -> tuple[Observation, float | None]:
        """Read the pod and judge it (see _judge); an unreadable pod pauses its pending timer."""
        try:
            pod = self.api.read_pod(name)
        except BackendError:
            self._pause_timer(name)
            raise
        if pod is None:
            gone = Observation(ref=name, state=JobState.LOST, return_code=ReturnCode.ABORTED, reason="vanished",
                               message=f"pod {name} no longer exists")
            return self._finish(name, None, gone), None
        return self._judge(pod)

    def _observe(self, pod: dict[str, Any], *, deleted: bool = False) -> Observation:
        return self._judge(pod, deleted=deleted)[0]

    def _judge(self, pod: dict[str, Any], *, deleted: bool = False) -> tuple[Observation, float | None]:
        """The pod's observation, and the clock() time at which a pending timer of it falls due
        (None: no timer runs), so that stream() can look again then."""
        name = pod["metadata"]["name"]
        obs = pod_observation(pod)
        if obs.state.is_terminal:
            return self._finish(name, pod, obs), None
        if deleted:
            return self._finish(name, None, Observation(
                ref=name, job_pk=obs.job_pk, state=JobState.LOST, return_code=ReturnCode.ABORTED,
                reason="vanished", message=f"pod {name} was deleted while {obs.state.value}")), None
        phase = (pod.get("status") or {}).get("phase")
        if phase not in ("Pending", "Unknown"):
            self._drop_timer(name)
            return obs, None
        verdict = classify_pending(pod, lambda: self.api.events_for(name), time.time())
        now = self.clock()
        due: list[float] = []
        if verdict.action == "fail":
            return self._fail_pending(pod, verdict.reason, verdict.message), None
        if verdict.action == "wait_resources":
            start = pending_clock_start(pod, fallback=now)
            with self._lock:
                pause = self._paused.get(name)
                if pause is None or pause.start != start:
                    pause = self._paused[name] = PendingPause(start)
                elapsed = now - start - pause.total(now)
            limit = self._pending_timeout(pod)
            if limit is not None and elapsed >= limit:
                return self._fail_pending(pod, verdict.reason, f"no resources after {elapsed:.0f}s "
                                          f"(pending_timeout {limit:g}s): {verdict.message}"), None
            if limit is not None:
                due.append(now + limit - elapsed)
        elif verdict.action == "pause":
            self._pause_timer(name)
        else:
            self._drop_timer(name)
        created = pod_time(pod["metadata"].get("creationTimestamp"))
        if self.config.timeout is not None and phase == "Pending" and created is not None:
            if now - created >= self.config.timeout:
                return self._fail_pending(pod, "StartTimeout", f"pod not running after {now - created:.0f}s "
                                          f"(site timeout {self.config.timeout:g}s)"), None
            due.append(created + self.config.timeout)
        return Observation(ref=name, job_pk=obs.job_pk, state=JobState.STARTING, reason=verdict.reason or obs.reason,
                           message=verdict.message or obs.message), min(due, default=None)

    def _pending_timeout(self, pod: dict[str, Any]) -> float | None:
        annotations = pod["metadata"].get("annotations") or {}
        raw = annotations.get(km.PENDING_TIMEOUT_ANNOTATION)
        if raw is None:
            return self.config.pending_timeout
        return None if raw == "none" else float(raw)

    def _fail_pending(self, pod: dict[str, Any], reason: str, message: str) -> Observation:
        """§4.8 fail: delete the pod at once (grace 0) and report 101."""
        name = pod["metadata"]["name"]
        tail = self.api.logs_tail(pod)
        try:
            self.api.delete("pods", name, grace=0)
        except BackendError as exc:
            log.warning("could not delete failed pending pod %s: %s", name, exc)
        obs = Observation(ref=name, job_pk=(pod["metadata"].get("labels") or {}).get(LABEL_JOB_PK),
                          state=JobState.FAILED, return_code=ReturnCode.EXCEPTION, reason=reason,
                          message=f"{reason}: {message}" if message else reason, logs_tail=tail)
        return self._finish(name, None, obs)

    def _finish(self, name: str, pod: dict[str, Any] | None, obs: Observation) -> Observation:
        """A terminal sighting: keep the logs tail and drop the credential Secret (again each time:
        a 404 is fine). The job row, not this object, remembers the verdict."""
        if obs.logs_tail is None and pod is not None:
            obs = _replace(obs, logs_tail=self.api.logs_tail(pod))
        self.api.delete_credentials(name)
        self._drop_timer(name)
        return obs

    def _drop_timer(self, name: str) -> None:
        with self._lock:
            self._paused.pop(name, None)

    def _pause_timer(self, name: str) -> None:
        with self._lock:
            pause = self._paused.get(name)
            if pause:
                pause.pause(self.clock())

    def list_managed(self) -> list[Observation]:
        data = self.api.call("list", "pods", self.api.core().list_namespaced_pod, self.api.namespace,
                          label_selector=self._selector)
        return [pod_observation(pod) for pod in data.get("items") or []]

    def check_connection(self, datasets: Iterable[DatasetSpec] = ()) -> list[CheckResult]:
        """See KubeApi.check_connection (datasets are PVC claims, not checked here)."""
        return self.api.check_connection(datasets)

    # -- stop, logs, cleanup ------------------------------------------------------------------

    def terminate(self, handle: Handle) -> Observation:
        """Delete the pod (grace 0) and its credential Secret. A pod that already ended keeps a
        success or a preserved 101-103 (base.terminated_outcome); otherwise ABORTED/9. Idempotent:
        a missing pod is fine."""
        name = handle.ref
        pod = self.api.read_pod(name)
        if pod is not None and pod_observation(pod).state.is_terminal:
            obs = terminated_outcome(pod_observation(pod))
        else:
            obs = Observation(ref=name, job_pk=_job_pk(pod), state=JobState.ABORTED,
                              return_code=ReturnCode.ABORTED, reason="terminated" if pod else "vanished",
                              message="terminated by the launcher" if pod else f"pod {name} was already gone")
        if pod is not None:
            obs = _replace(obs, logs_tail=self.api.logs_tail(pod))
            self.api.delete("pods", name, grace=0)
        return self._finish(name, None, obs)

    def logs(self, handle: Handle, *, tail: int = LOGS_TAIL) -> str:
        pod = self.api.read_pod(handle.ref)
        # tail_lines bounds what the API returns; the byte cap applies after (backends.logtail)
        return cap_tail(self.api.logs_tail(pod, tail=tail, quiet=False), lines=tail) if pod else ""

    def cleanup(self, handle: Handle) -> None:
        """Delete an ended pod and its credential Secret (after the job record is complete). Raises
        StillRunning for a pod that is still starting or running (terminate it first); a pod
        already being deleted counts as ended. Missing is fine."""
        name = handle.ref
        pod = self.api.read_pod(name)
        if pod is not None:
            if not pod_observation(pod).state.is_terminal and not pod["metadata"].get("deletionTimestamp"):
                raise StillRunning(f"pod {name} has not finished; terminate it before cleanup")
            self.api.delete("pods", name)
        try:
            self.api.delete("secrets", km.credential_secret_name(name))
        finally:
            self._drop_timer(name)

    # -- stream -------------------------------------------------------------------------------

    def stream(self, stop: threading.Event, *, since: int | None = None) -> Iterator[Observation]:
        """Watch this site's pods and the Warning events about them. Every watch starts with a list
        of every pod of the site, so the stream always begins with the current state of each: that
        covers anything since `since`, which is therefore not needed here. Resumes after disconnects
        from the last resourceVersion, relists on 410 Gone, restarts silent watches every
        `watch_timeout` seconds and looks again at a pending pod when its timer falls due. Returns
        within about `poll_interval` of `stop` being set; raises BackendError(retryable=True) when
        the API cannot be reached."""
        inbox: queue.Queue = queue.Queue()
        halt = threading.Event()
        core = self.api.core()
        feeds = [
            WatchFeed("pods", core.list_namespaced_pod, self.api, inbox, halt, self.watch_timeout,
                      label_selector=self._selector),
            WatchFeed("events", core.list_namespaced_event, self.api, inbox, halt, self.watch_timeout,
                      field_selector="type=Warning,involvedObject.kind=Pod"),
        ]
        # What this stream has seen, for the Warning events it forwards; rebuilt by every stream.
        seen_events: set[str] = set()
        pods: dict[str, Observation] = {}
        due: dict[str, float] = {}
        for feed in feeds:
            feed.start()
        try:
            while not stop.is_set():
                try:
                    kind, event_type, obj = inbox.get(timeout=self.poll_interval)
                except queue.Empty:
                    yield from self._due_timers(due, pods)
                    continue
                if kind == "error":
                    raise obj
                if kind == "pods":
                    obs, when = self._judge(obj, deleted=event_type == "DELETED")
                    pods[obs.ref] = obs
                    _set_due(due, obs.ref, when)
                    yield obs
                elif kind == "events":
                    obs = self._event_observation(obj, pods)
                    if obs is not None and obs.event_id not in seen_events:
                        seen_events.add(obs.event_id or "")
                        yield obs
        finally:
            halt.set()
            for feed in feeds:
                feed.close()

    def _due_timers(self, due: dict[str, float], pods: dict[str, Observation]) -> Iterator[Observation]:
        now = self.clock()
        for name in [name for name, when in due.items() if when <= now]:
            try:
                obs, when = self._look(name)
            except BackendError:
                continue
            _set_due(due, name, when)
            pods[name] = obs
            if obs.state.is_terminal:
                yield obs

    def _event_observation(self, event: dict[str, Any], pods: Mapping[str, Observation]) -> Observation | None:
        involved = event.get("involvedObject") or {}
        name = involved.get("name") or ""
        if event.get("type") != "Warning" or not name.endswith(self._pod_suffix):
            return None
        meta = event.get("metadata") or {}
        last = pods.get(name)
        return Observation(ref=name, job_pk=last.job_pk if last else None,
                           state=last.state if last else JobState.STARTING, kind="event",
                           reason=event.get("reason") or "", message=event.get("message") or "",
                           at=event_time(event),
                           event_id=f"{meta.get('uid')}:{event.get('count') or 1}:{meta.get('resourceVersion')}")


# ---------------------------------------------------------------------------------------------
# Pure helpers
# ---------------------------------------------------------------------------------------------


def _set_due(due: dict[str, float], name: str, when: float | None) -> None:
    if when is None:
        due.pop(name, None)
    else:
        due[name] = when


def _job_pk(pod: Mapping[str, Any] | None) -> str | None:
    return (((pod or {}).get("metadata") or {}).get("labels") or {}).get(LABEL_JOB_PK)


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
        raise InvalidJobSpec("kubernetes.startup_dir", f"cannot read the startup kit {directory}: "
                                                       f"{exc.strerror or type(exc).__name__}") from exc
    for entry in entries:
        if entry.name.endswith(km.STARTUP_KIT_SUFFIXES) and entry.is_file(follow_symlinks=False):
            with open(entry.path, "rb") as f:
                files[entry.name] = f.read()
    if not files:  # the job could not connect to its parent without fed_client.json / certificates
        raise InvalidJobSpec("kubernetes.startup_dir", f"{directory} holds no startup kit files "
                                                       f"({', '.join(km.STARTUP_KIT_SUFFIXES)})")
    return files
