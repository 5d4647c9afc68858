"""Where a dataset (or Docker secret mount) source may point: the rules on the path's text, decided
in the caller's process before the filesystem is looked at (docs/security.md), and the filesystem's
(the source exists, symlinks resolved), decided where the site's data is: jobs.tasks.dataset_source_task
through engine_calls.engine_call, so on a worker with LAUNCHER_ENGINE_VIA_WORKER (in compose the web
process mounts neither the workspaces nor the data roots). Plain data in and out.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from typing import Any

from backends.base import InvalidJobSpec
from backends.common import (
    DOCKER_SOCKETS,
    NEVER_MOUNTABLE,
    overlaps_protected,
    under_allowed_roots,
)
from jobs.models import Site

PVC_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def dataset_sources_check(site: Site, sources: Iterable[str]) -> dict[str, str | None]:
    """Each source's problem as a dataset of `site` (None: fine). The rules on the path's text are
    decided here (docs/security.md: containment before the filesystem is looked at); the rest (it
    exists, symlinks resolved) where the site's filesystem is: jobs.tasks.dataset_source_task through
    engine_call, so on a worker with LAUNCHER_ENGINE_VIA_WORKER. Raises BackendError (WorkerNoAnswer)
    when that check could not run: call it before a transaction."""
    from jobs.services.engine_calls import engine_call, site_ref
    from jobs.tasks import dataset_source_task

    found = {source: dataset_source_text_error(site, source) for source in dict.fromkeys(sources)}
    pending = [source for source, problem in found.items() if problem is None]
    if pending and site.backend != "kubernetes":  # a claim name has nothing on the filesystem to look at
        found.update(engine_call(dataset_source_task, site=site_ref(site), sources=pending))
    return found


def dataset_source_errors(*, site: dict[str, Any], sources: list[str]) -> dict[str, str | None]:
    """dataset_source_task's body, where the filesystem is: `site` as engine_calls.site_ref gives it."""
    from jobs.services.engine_calls import site_of

    unsaved = site_of(site)
    return {source: dataset_source_error(unsaved, source) for source in sources}


def dataset_source_text_error(site: Site, source: Any) -> str | None:
    """dataset_source_error's rules decided on the path's text alone (no filesystem access)."""
    if site.backend == "kubernetes":
        return None if PVC_NAME_RE.match(source or "") else f"{source!r} is not a valid PersistentVolumeClaim name."
    if not isinstance(source, str) or not source.strip():
        return "A source path is required."
    if not os.path.isabs(source):
        return f"{source!r} must be an absolute host path."
    if "\0" in source:  # the filesystem's calls would raise, not answer
        return "A source path cannot contain NUL characters."
    path = os.path.normpath(source)
    if path in NEVER_MOUNTABLE or path.endswith("/docker.sock"):
        return f"{source} can never be mounted into a job."
    roots = [os.path.normpath(r) for r in site.allowed_data_roots or () if r]
    if not any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots):
        return f"{source} is not under the site's allowed data roots ({', '.join(roots) or 'none configured'})."
    workspaces = site_workspaces(site)
    for protected in _protected_paths(site, workspaces):
        target = os.path.normpath(protected)
        if not os.path.isabs(target):
            continue
        if os.path.commonpath([path, target]) in (path, target):
            return _overlap_message(source, protected, workspaces)
    return None


def dataset_source_error(site: Site, source: str) -> str | None:
    """Why `source` cannot be this site's dataset source, or None, as the host where this runs sees
    it. Host paths (docker, process) must exist under the allowed roots; Kubernetes sources are PVC
    claim names. A save asks dataset_sources_check (which runs this where the filesystem is)."""
    if site.backend == "kubernetes":
        return None if PVC_NAME_RE.match(source or "") else f"{source!r} is not a valid PersistentVolumeClaim name."
    try:
        under_allowed_roots(source, site.allowed_data_roots or [], "source")
    except InvalidJobSpec as exc:
        return exc.reason[0].upper() + exc.reason[1:] + "."
    workspaces = site_workspaces(site)
    hit = overlaps_protected(source, _protected_paths(site, workspaces))
    return _overlap_message(source, hit, workspaces) if hit else None


def _protected_paths(site: Site, workspaces: list[str]) -> list[str]:
    protected = [*workspaces, *DOCKER_SOCKETS]
    docker_host = (site.docker or {}).get("docker_host") or ""
    if docker_host.startswith("unix://"):
        protected.append(docker_host.removeprefix("unix://"))
    return [p for p in protected if p]


def _overlap_message(source: str, hit: str, workspaces: list[str]) -> str:
    what = "the Docker socket" if hit not in workspaces else f"the site's workspace {hit}"
    return f"{source} is, contains or lies inside {what}, which is never a dataset."


def site_workspaces(site: Site) -> list[str]:
    """Host workspaces of the site (with their startup/ and local/ kits): never a dataset source."""
    from jobs.services.sites import site_backend_settings

    paths = []
    if site.backend == "process" or site.process:
        process = dict(site.process or {})
        if site.backend == "process":
            process = site_backend_settings(site)
        paths.append(process.get("workspace") or "")
    if site.backend == "docker" or site.docker:
        paths.append((site.docker or {}).get("workspace") or os.environ.get("NVFL_DOCKER_WORKSPACE", ""))
    return [p for p in paths if p]
