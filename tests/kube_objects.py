"""Objects of the loopback Kubernetes API server (tests/kube_api_server.py): pod statuses as a
kubelet would write them (for tests that play the kubelet), label/field selectors, JSON merge
patches and Status bodies."""

from __future__ import annotations

import copy
import time
from datetime import datetime, timezone
from typing import Any

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
