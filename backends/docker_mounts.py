"""Host-side path checks of the Docker backend (launch-semantics.md §3.3): the workspace, the job
directory, the container user, and which host paths may be bind-mounted into a job.

Unlike backends/docker_specs.py these read the host filesystem (existence, symlinks, ownership),
so they are exercised through DockerBackend.prepare() and check_connection() against real
directories (tests/backends/test_docker_prepare.py).
"""

from __future__ import annotations

import os
from typing import Any

from backends import nvflare
from backends.base import DatasetSpec, InvalidJobSpec, LaunchSpec
from backends.docker_specs import CONTAINER_ROOT, DEFAULT_SOCKETS, bind, check_user


def workspace_dir(configured: str) -> str:
    """The site's NVFlare workspace, resolved: the configured path or $NVFL_DOCKER_WORKSPACE, which
    must hold startup/ and local/."""
    configured = configured or os.environ.get("NVFL_DOCKER_WORKSPACE", "")
    if not configured:
        raise InvalidJobSpec("docker.workspace", "no workspace configured (set it on the site or NVFL_DOCKER_WORKSPACE)")
    if not os.path.isabs(configured) or os.path.normpath(configured) != configured or configured == "/":
        raise InvalidJobSpec("docker.workspace", f"{configured!r} must be a normalised absolute path other than '/'")
    workspace = os.path.realpath(configured)
    for path in (workspace, f"{workspace}/startup", f"{workspace}/local"):
        if not os.path.isdir(path):
            raise InvalidJobSpec("docker.workspace", f"{path} does not exist or is not a directory")
    return workspace


def check_job_dir(workspace: str, job_id: str) -> None:
    """An existing job directory must be a real directory inside the workspace (launch() creates a missing one)."""
    path = os.path.join(workspace, job_id)
    if not os.path.lexists(path):
        return  # launch() creates it
    if not os.path.realpath(path).startswith(workspace + os.sep):
        raise InvalidJobSpec("job_id", f"job directory {path} escapes workspace {workspace}")
    if os.path.islink(path):
        raise InvalidJobSpec("job_id", f"job directory {path} must not be a symlink")


def job_user(user: str, workspace: str, *, allow_root: bool) -> str:
    """The container's "uid:gid": the site's setting, else the owner of the workspace directory."""
    if not user:
        info = os.stat(workspace)
        user = f"{info.st_uid}:{info.st_gid}"
    return check_user(user, "docker.user", allow_root=allow_root)


def python_path_dirs(workspace: str, job_id: str, site: str) -> list[str]:
    """PYTHONPATH entries (container paths) for the custom-code directories present on the host."""
    python_dirs = [
        (f"{workspace}/{job_id}/app_{site}/custom", f"{CONTAINER_ROOT}/{job_id}/app_{site}/custom"),
        (f"{workspace}/local/custom", f"{CONTAINER_ROOT}/local/custom"),
    ]
    return [inside for host, inside in python_dirs if os.path.isdir(host)]


def socket_paths(docker_host: str) -> set[str]:
    """Host paths of the Docker sockets this backend may be talking to, symlinks resolved."""
    candidates = [*DEFAULT_SOCKETS, docker_host, os.environ.get("DOCKER_HOST", "")]
    return {
        os.path.realpath(c.removeprefix("unix://"))
        for c in candidates if c and (c.startswith("unix://") or c.startswith("/"))
    }


def confined_source(
    source: Any, path: str, *, allowed_roots: tuple[str, ...], docker_host: str, extra_roots: tuple[str, ...] = ()
) -> str:
    """A host path that may be bind-mounted: it exists, resolves (symlinks followed) under an
    allowed root, and is neither `/` nor the Docker socket nor a directory holding it."""
    if not isinstance(source, str) or not os.path.isabs(source):
        raise InvalidJobSpec(path, "must be an absolute host path")
    resolved = os.path.realpath(source)
    if not os.path.exists(resolved):
        raise InvalidJobSpec(path, f"{source} does not exist")
    for socket in socket_paths(docker_host):
        if resolved == "/" or resolved == socket or socket.startswith(resolved.rstrip("/") + "/"):
            raise InvalidJobSpec(path, f"{source} is or contains the Docker socket and is never mounted")
    roots = allowed_roots + extra_roots
    if not any(resolved == root or resolved.startswith(root.rstrip("/") + "/") for root in roots):
        allowed = ", ".join(allowed_roots) or "none configured"
        raise InvalidJobSpec(path, f"{source} is outside the site's allowed data roots ({allowed})")
    return resolved


def dataset_mount(
    dataset: DatasetSpec, study: str, *, allowed_roots: tuple[str, ...], docker_host: str
) -> dict[str, Any]:
    """The bind mount of one study dataset, after checking its names, mode and host source."""
    path = f"study.{study}.datasets.{dataset.name}"
    nvflare.check_name(dataset.study, f"{path}.study")
    nvflare.check_name(dataset.name, path)
    if dataset.study != study:
        raise InvalidJobSpec(f"{path}.study", f"belongs to study {dataset.study!r}, not {study!r}")
    if dataset.mode not in ("ro", "rw"):
        raise InvalidJobSpec(f"{path}.mode", "must be 'ro' or 'rw'")
    source = confined_source(dataset.source, f"{path}.source", allowed_roots=allowed_roots, docker_host=docker_host)
    return bind(source, dataset.mount_path, read_only=dataset.mode == "ro")


def ensure_job_dir(spec: LaunchSpec) -> None:
    """Create the job's host directory (owned by the container user) unless it already exists as a
    real directory. Called by launch(), just before the container is created."""
    source = next(m["Source"] for m in spec.options["mounts"] if m.get("Target") == spec.workdir)
    try:
        os.mkdir(source, 0o750)
    except FileExistsError:
        if os.path.islink(source) or not os.path.isdir(source):
            raise InvalidJobSpec("job_id", f"job directory {source} must not be a symlink") from None
        return
    uid, gid = (int(part) for part in spec.options["user"].split(":"))
    os.chown(source, uid, gid)
