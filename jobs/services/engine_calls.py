"""Where the web process's engine calls run: here, or on a Celery worker (LAUNCHER_ENGINE_VIA_WORKER).

In the production layout (compose.yaml) only the worker and the watcher can reach the engine (the
Docker socket, the kubeconfig) and the sites' workspaces and data; the web process cannot. Test
connection, a running job's logs, a submit's host checks (jobs.services.submission) and a dataset or secret
mount source's filesystem check (jobs.services.dataset_sources) are then Celery tasks (jobs.tasks) that the request awaits at most LAUNCHER_CHECK_DEADLINE_SECONDS:
an absent or busy worker costs a request that long and answers "the worker did not answer within
N s" (WorkerNoAnswer, a retryable BackendError: 503 over the API), never a hung request thread.

The tasks take plain data (the site's settings as the request sees them, possibly unsaved: a save checks
them before its transaction) and return plain data, so a worker needs no database read to
answer. `engine_call` is the one switch between calling the task's body here and sending it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

from celery.exceptions import TimeoutError as ResultTimeout
from django.conf import settings

from backends.base import (
    Backend,
    BackendError,
    EngineUnreachable,
    InvalidJobSpec,
    connection_cause,
)
from jobs.models import Backend as BackendKind
from jobs.models import Site

log = logging.getLogger(__name__)


class WorkerNoAnswer(BackendError):
    """The call was sent to a worker and no answer came back before the deadline."""

    def __init__(self, deadline: int):
        super().__init__(f"the worker did not answer within {deadline} s (no Celery worker running, every "
                         "worker busy, or the engine slow to answer)", retryable=True)
        self.deadline = deadline


def via_worker() -> bool:
    return bool(settings.LAUNCHER_ENGINE_VIA_WORKER)


def deadline_seconds() -> int:
    return int(settings.LAUNCHER_CHECK_DEADLINE_SECONDS)


def site_ref(site: Site) -> dict[str, Any]:
    """What a worker needs to build the site's backend, as the caller sees the site (saved or not)."""
    return {"pk": site.pk, "name": site.name, "backend": site.backend,
            "settings": dict(getattr(site, site.backend) or {}),
            # Another backend's leftover block: its workspace is never a dataset (catalog.site_workspaces).
            "others": {kind: dict(getattr(site, kind)) for kind in BackendKind.values
                       if kind != site.backend and getattr(site, kind)},
            "allowed_data_roots": list(site.allowed_data_roots or ()),
            "updated_at": site.updated_at.isoformat() if site.updated_at else None}


def site_of(ref: dict[str, Any]) -> Site:
    """The site as site_ref saw it, unsaved (for the checks that take a Site)."""
    site = Site(pk=ref["pk"], name=ref["name"], backend=ref["backend"], allowed_data_roots=ref["allowed_data_roots"],
                updated_at=datetime.fromisoformat(ref["updated_at"]) if ref["updated_at"] else None)
    for kind, block in ref.get("others", {}).items():
        setattr(site, kind, block)
    setattr(site, ref["backend"], ref["settings"])
    return site


def backend_of(ref: dict[str, Any]) -> Backend:
    """The site's backend, built where the call runs (jobs.services.sites' per-process cache)."""
    from jobs.services.sites import site_backend

    return site_backend(site_of(ref))


def answer(function: Callable[..., Any], **kwargs: Any) -> dict[str, Any]:
    """A task's return value: {"value": ...}, or the BackendError the call raised, as data (an
    exception does not survive the JSON result backend with its fields)."""
    try:
        return {"value": function(**kwargs)}
    except InvalidJobSpec as exc:
        return {"error": str(exc), "field": exc.field, "reason": str(exc).removeprefix(f"{exc.field}: ")}
    except EngineUnreachable as exc:
        return {"error": str(exc), "unreachable": True}
    except BackendError as exc:
        return {"error": str(exc), "retryable": exc.retryable}


def _unwrap(result: dict[str, Any]) -> Any:
    if "value" in result:
        return result["value"]
    if "field" in result:
        raise InvalidJobSpec(result["field"], result["reason"])
    if result.get("unreachable"):
        raise EngineUnreachable(result["error"])
    raise BackendError(result["error"], retryable=bool(result.get("retryable")))


def engine_call(task: Any, /, **kwargs: Any) -> Any:
    """Run `task` (a jobs.tasks engine task, whose body returns answer(...)) and return its value
    or raise its BackendError. With LAUNCHER_ENGINE_VIA_WORKER a worker runs it and this waits at
    most the deadline (WorkerNoAnswer after it; the message expires, so a worker that comes back
    later does not run a call nobody waits for). Otherwise it runs here, in the caller's thread."""
    if not via_worker():
        return _unwrap(task.run(**kwargs))
    deadline = deadline_seconds()
    try:
        result = task.apply_async(kwargs=kwargs, expires=deadline)
    except Exception as exc:  # kombu's OperationalError and the Redis client's: the broker is down
        raise BackendError(f"cannot hand the call to a worker: {connection_cause(exc)}", retryable=True) from exc
    try:
        # Not inside a task: the embedded worker marks the whole process as one, hence the flag.
        reply = result.get(timeout=deadline, propagate=False, disable_sync_subtasks=False)
    except ResultTimeout:
        raise WorkerNoAnswer(deadline) from None
    except Exception as exc:  # the result backend went away while waiting
        raise BackendError(f"no answer from the worker: {connection_cause(exc)}", retryable=True) from exc
    finally:
        try:
            result.forget()
        except Exception:  # the result expires on its own (CELERY_RESULT_EXPIRES)
            log.debug("could not forget engine call result %s", result.id, exc_info=True)
    if not isinstance(reply, dict):  # the task itself failed (a bug, a worker lost): it logged why
        raise BackendError(f"the worker could not run {task.name.rsplit('.', 1)[-1]}: {reply!r}"[:300])
    return _unwrap(reply)
