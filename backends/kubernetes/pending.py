"""Kubernetes backend, pure part two: how a pod's JSON reads as a job state. Pending pods are
classified exactly as NVFlare does (launch-semantics.md §4.8), with the wait-for-resources timer;
`pod_observation()` maps the phase to a state and NVFlare return code (§4.9). No API calls here.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from backends.base import LABEL_JOB_PK, JobState, Observation, ReturnCode
from backends.kubernetes import manifests as km


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


class PendingPause:
    """Time a wait-for-resources timer spent paused (§4.8: the pod or its events were unreadable),
    for the timer that started at `start` (the pod's own timestamp, see pending_clock_start)."""

    def __init__(self, start: float):
        self.start = start
        self.paused_at: float | None = None
        self.paused_total = 0.0

    def pause(self, now: float) -> None:
        if self.paused_at is None:
            self.paused_at = now

    def total(self, now: float) -> float:
        """Paused seconds so far; reading it ends a pause (the pod was readable again)."""
        if self.paused_at is not None:
            self.paused_total += now - self.paused_at
            self.paused_at = None
        return self.paused_total


def pending_clock_start(pod: Mapping[str, Any], *, fallback: float) -> float:
    """When the wait for resources began, from the pod itself so that it survives a restart: the
    last transition of its PodScheduled condition (the scheduler's verdict), else its creation."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled":
            when = pod_time(condition.get("lastTransitionTime"))
            if when is not None:
                return when
    when = pod_time((pod.get("metadata") or {}).get("creationTimestamp"))
    return fallback if when is None else when


def is_shortage(text: str) -> bool:
    for match in SHORTAGE_RE.finditer(text or ""):
        resource = match.group(1).rstrip(".,;:").lower()
        if resource in ("cpu", "memory") or "gpu" in resource:
            return True
    return False


def pod_time(value: Any) -> float | None:
    """An API timestamp (RFC 3339) as epoch seconds; None when absent or malformed."""
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
        when = pod_time(value)
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
    at = pod_time(terminated.get("finishedAt"))  # the exit's own time (exit -> publish latency)
    if phase == "Succeeded":
        return Observation(ref=name, job_pk=job_pk, state=JobState.SUCCEEDED, exit_code=exit_code,
                           return_code=ReturnCode.SUCCESS, reason=terminated.get("reason") or "Completed", at=at)
    if phase == "Failed":
        code = exit_code if exit_code in (101, 102, 103) else ReturnCode.ABORTED
        reason = terminated.get("reason") or status.get("reason") or "Failed"
        message = terminated.get("message") or status.get("message") or f"main container exited with {exit_code}"
        if reason == "OOMKilled":  # its own reason, said plainly: the pod's memory limit was exceeded
            message = f"out of memory: the main container exceeded its memory limit (exit code {exit_code})"
        return Observation(ref=name, job_pk=job_pk, state=JobState.FAILED, exit_code=exit_code,
                           return_code=int(code), reason=reason, message=message, at=at)
    if phase == "Running":
        return Observation(ref=name, job_pk=job_pk, state=JobState.RUNNING)
    return Observation(ref=name, job_pk=job_pk, state=JobState.STARTING, reason=waiting.get("reason") or phase,
                       message=waiting.get("message") or "")
