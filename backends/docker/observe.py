"""Docker state -> Observation (launch-semantics.md §3.8): the pure mapping from `docker inspect`
data and container events to the backend's Observations, and the NVFlare return-code rules.

Nothing here talks to a daemon, so everything is tested against literal dicts
(tests/backends/test_docker_specs.py). backend.py and watch.py read the daemon and call these.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from backends.base import LABEL_JOB_PK, JobState, Observation, ReturnCode, state_for_return_code
from backends.common import return_code_for_exit

STARTING_STATUSES = frozenset({"created", "restarting"})
RUNNING_STATUSES = frozenset({"running", "paused"})


def parse_docker_time(value: Any) -> float | None:
    """RFC 3339 with nanoseconds ("2024-05-01T10:00:00.123456789Z") -> epoch seconds; the zero time -> None."""
    if not isinstance(value, str) or not value or value.startswith("0001-"):
        return None
    match = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)$", value)
    if not match:
        return None
    base, fraction, zone = match.groups()
    stamp = datetime.fromisoformat(base + ("+00:00" if zone == "Z" else zone)).astimezone(timezone.utc)
    return stamp.timestamp() + (float(fraction) if fraction else 0.0)


def observation_from_container(
    attrs: Mapping[str, Any], *, terminated: bool = False, logs_tail: str | None = None
) -> Observation:
    """Map `docker inspect` data. `terminated`: the launcher itself stopped this container, so an
    exit counts as aborted (9), as NVFlare's handle does after terminate()."""
    state = attrs.get("State") or {}
    status = state.get("Status", "")
    labels = (attrs.get("Config") or {}).get("Labels") or {}
    common = {"ref": str(attrs.get("Name", "")).lstrip("/"), "job_pk": labels.get(LABEL_JOB_PK)}
    oom = bool(state.get("OOMKilled"))
    error = state.get("Error") or ""
    if status in STARTING_STATUSES:
        return Observation(**common, state=JobState.STARTING, message=status, at=parse_docker_time(attrs.get("Created")))
    if status in RUNNING_STATUSES:
        return Observation(**common, state=JobState.RUNNING, message=status, at=parse_docker_time(state.get("StartedAt")))
    exit_code = state.get("ExitCode")
    at = parse_docker_time(state.get("FinishedAt"))
    if status == "dead":
        return Observation(**common, state=JobState.ABORTED, exit_code=exit_code, return_code=int(ReturnCode.ABORTED),
                           reason="dead", message=error or "container is dead", at=at, logs_tail=logs_tail)
    if status != "exited":
        return Observation(**common, state=JobState.STARTING, message=f"unknown Docker status {status!r}")
    code = int(ReturnCode.ABORTED) if terminated else return_code_for_exit(exit_code)
    reason = "OOMKilled" if oom else ("terminated" if terminated else "")
    message = error or (oom_message(exit_code) if oom else f"exited with code {exit_code}")
    return Observation(**common, state=state_for_return_code(code), exit_code=exit_code, return_code=code,
                       reason=reason, message=message, at=at, logs_tail=logs_tail)


def observation_from_summary(summary: Mapping[str, Any]) -> Observation | None:
    """Map one entry of the container list (`GET /containers/json`, no inspect) for a container that
    has not ended; None for one that has (its exit code, OOM flag and finish time need an inspect)."""
    status = summary.get("State", "")
    if status in ("exited", "dead"):
        return None
    names = summary.get("Names") or [""]
    common = {"ref": str(names[0]).lstrip("/"), "job_pk": (summary.get("Labels") or {}).get(LABEL_JOB_PK)}
    if status in RUNNING_STATUSES:
        return Observation(**common, state=JobState.RUNNING, message=status)
    if status in STARTING_STATUSES:
        return Observation(**common, state=JobState.STARTING, message=status, at=summary.get("Created"))
    return Observation(**common, state=JobState.STARTING, message=f"Docker status {status!r}")


def oom_message(exit_code: Any) -> str:
    return (f"out of memory: the kernel killed the job for exceeding the container's memory limit "
            f"(exit code {exit_code}); raise the job's memory resource or use less")


STREAM_ACTIONS = ("create", "start", "die", "oom", "destroy")


def event_key(event: Mapping[str, Any]) -> tuple[str, int, str]:
    """Identity of one event, for dropping the ones a `since` replay sends again."""
    return (str(event.get("id", "")), int(event.get("timeNano") or 0), str(event.get("Action", "")))


def observation_from_event(
    event: Mapping[str, Any], *, terminated: bool = False, oom: bool = False, logs_tail: str | None = None
) -> Observation | None:
    """Map one container event from the events API; None for actions the launcher ignores."""
    action = event.get("Action") or event.get("status") or ""
    attributes = (event.get("Actor") or {}).get("Attributes") or {}
    nano = event.get("timeNano")
    common = {
        "ref": attributes.get("name", ""),
        "job_pk": attributes.get(LABEL_JOB_PK),
        "at": nano / 1e9 if nano else event.get("time"),
        "event_id": f"{event.get('id', '')}:{nano}:{action}",
    }
    if action == "create":
        return Observation(**common, state=JobState.STARTING, message="container created")
    if action == "start":
        return Observation(**common, state=JobState.RUNNING, message="container started")
    if action == "oom":
        return Observation(**common, state=JobState.RUNNING, kind="event", reason="OOMKilled",
                           message="the kernel killed a process for exceeding the memory limit")
    if action == "destroy":
        return Observation(**common, state=JobState.LOST, reason="vanished", message="container removed")
    if action == "die":
        try:
            exit_code: int | None = int(attributes.get("exitCode"))
        except (TypeError, ValueError):
            exit_code = None
        code = int(ReturnCode.ABORTED) if terminated else return_code_for_exit(exit_code)
        reason = "OOMKilled" if oom else ("terminated" if terminated else "")
        return Observation(**common, state=state_for_return_code(code), exit_code=exit_code, return_code=code,
                           reason=reason, message=oom_message(exit_code) if oom else f"exited with code {exit_code}",
                           logs_tail=logs_tail)
    return None
