"""What every backend does alike: workload names, NVFlare's exit-code mapping, the environment only
the launcher sets, and host-path confinement (process, docker). Pure apart from the path checks,
which read the host filesystem; no engine calls."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable
from typing import Any

from backends import nvflare
from backends.base import InvalidJobSpec, ReturnCode

RESERVED_WORKSPACE_NAMES = ("startup", "local")
DOCKER_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")  # where the daemon's socket usually is
NEVER_MOUNTABLE = ("/", *DOCKER_SOCKETS)
OWNER_FQCN_ENV = "NVFL_WORKSPACE_OWNER_FQCN"
TRANSFER_TOKEN_ENV = "NVFL_WORKSPACE_TRANSFER_TOKEN"
# Env names only the launcher sets (launch-semantics.md §5.2): site and study env may not hold them.
LAUNCHER_OWNED_ENV = frozenset({"PYTHONPATH", OWNER_FQCN_ENV, TRANSFER_TOKEN_ENV, *nvflare.CREDENTIAL_ENV.values()})


def workload_name(site: str, job_id: str) -> str:
    """The container / process name of (site, job_id) (§3.2): lower(f"{site}-{job_id}"), other
    characters -> '-', outer '-' stripped, empty -> nvflare-job. (Kubernetes has its own: a pod
    name is an RFC 1123 label, backends.kubernetes.manifests.pod_name.)"""
    name = re.sub(r"[^a-z0-9_.-]", "-", f"{site}-{job_id}".lower()).strip("-")
    return name or "nvflare-job"


def return_code_for_exit(exit_code: int | None) -> int:
    """NVFlare maps an ended local process's or container's exit code: 0 -> 0, 9 -> 9, anything
    else -> 1 (Kubernetes differs: launch-semantics.md §4.9)."""
    if exit_code in (ReturnCode.SUCCESS, ReturnCode.ABORTED):
        return int(exit_code)
    return int(ReturnCode.EXECUTION_ERROR)


def normpath(value: str) -> str:
    """posixpath.normpath, except that a leading '//' is folded to '/' as well."""
    normal = posixpath.normpath(value)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


def check_workspace_child(name: Any, path: str = "job_id") -> str:
    """§3.3 name rules for a job's own workspace directory, as text (workspace_child() adds the
    filesystem checks): a single, normalised, non-reserved child."""
    if (
        not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
        or "\0" in name or normpath(name) != name
    ):
        raise InvalidJobSpec(path, f"{name!r} must name a single workspace child (no path separators, '.' or '..')")
    if name in RESERVED_WORKSPACE_NAMES:
        raise InvalidJobSpec(path, f"{name!r} is a reserved workspace name")
    return name


def workspace_child(workspace: str, name: str, field: str = "job_id") -> str:
    """The host path `<workspace>/<name>` for a job's own directory, refusing anything that is not
    a single, normalised, non-reserved child that stays inside the workspace (§3.3)."""
    check_workspace_child(name, field)
    root = os.path.realpath(workspace)
    path = os.path.join(root, name)
    if os.path.islink(path):
        raise InvalidJobSpec(field, f"workspace entry {path} must not be a symlink")
    if os.path.commonpath([root, os.path.realpath(path)]) != root:
        raise InvalidJobSpec(field, f"{path} escapes workspace {root}")
    return path


def under_allowed_roots(source: str, roots: Iterable[str], field: str) -> str:
    """Resolve `source` (symlinks followed) and require it to exist inside one of `roots`.
    `/` and the Docker socket are refused whatever the roots say."""
    if not isinstance(source, str) or not source.strip():
        raise InvalidJobSpec(field, "a source path is required")
    if not os.path.isabs(source):
        raise InvalidJobSpec(field, f"{source!r} must be an absolute host path")
    resolved = os.path.realpath(source)
    if resolved in NEVER_MOUNTABLE or resolved.endswith("/docker.sock"):
        raise InvalidJobSpec(field, f"{source} can never be mounted into a job")
    allowed = [os.path.realpath(r) for r in roots if r]
    if not any(resolved == r or resolved.startswith(r.rstrip("/") + "/") for r in allowed):
        shown = ", ".join(allowed) or "none configured"
        raise InvalidJobSpec(field, f"{source} is not under the site's allowed data roots ({shown})")
    if not os.path.exists(resolved):
        raise InvalidJobSpec(field, f"{source} does not exist")
    return resolved


def overlaps_protected(source: str, protected: Iterable[str]) -> str | None:
    """The first of `protected` (a site's workspace, the Docker socket...) that the dataset
    `source` is, contains or lies inside, symlinks resolved; None when it touches none of them."""
    resolved = os.path.realpath(source)
    for path in protected:
        if not path:
            continue
        target = os.path.realpath(path)
        if resolved == target or os.path.commonpath([resolved, target]) in (resolved, target):
            return path
    return None
