"""Host-path safety shared by the backends that touch the host filesystem (process, docker)."""

from __future__ import annotations

import os
from collections.abc import Iterable

from backends.base import InvalidJobSpec

RESERVED_WORKSPACE_NAMES = ("startup", "local")
NEVER_MOUNTABLE = ("/", "/var/run/docker.sock", "/run/docker.sock")


def workspace_child(workspace: str, name: str, field: str = "job_id") -> str:
    """The host path `<workspace>/<name>` for a job's own directory, refusing anything that is not
    a single, normalised, non-reserved child that stays inside the workspace (§3.3)."""
    if not name or os.path.isabs(name) or os.sep in name or (os.altsep and os.altsep in name) \
            or os.path.normpath(name) != name or name in (".", ".."):
        raise InvalidJobSpec(field, f"{name!r} must be a single workspace child (no '/', '.', '..')")
    if name in RESERVED_WORKSPACE_NAMES:
        raise InvalidJobSpec(field, f"{name!r} is a reserved workspace name")
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
