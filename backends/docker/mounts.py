"""Host-side path checks of the Docker backend (launch-semantics.md §3.3): the workspace, the job
directory, the container user, and which host paths may be bind-mounted into a job.

Unlike backends/docker/specs.py these read the host filesystem (existence, symlinks, ownership),
so they are exercised through DockerBackend.prepare() and check_connection() against real
directories (tests/backends/test_docker_prepare.py). The symlink-free walk itself, and the
re-check right before a container starts, are in backends/docker/binds.py.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from backends import nvflare
from backends.base import BackendError, DatasetSpec, InvalidJobSpec, LaunchSpec, SecretMount
from backends.docker.binds import Pin, Root, exists_beneath, lexical, overlaps, pin, rebase, under, walk
from backends.common import DOCKER_SOCKETS, normpath
from backends.docker.config import check_user
from backends.docker.specs import CONTAINER_ROOT, bind

SHARED_FIELD = "job_args.parent_url"


def workspace_dir(configured: str) -> str:
    """The site's NVFlare workspace, resolved: the configured path or $NVFL_DOCKER_WORKSPACE, which
    must hold startup/ and local/ as real directories (not symlinks)."""
    configured = configured or os.environ.get("NVFL_DOCKER_WORKSPACE", "")
    if not configured:
        raise InvalidJobSpec("docker.workspace", "no workspace configured (set it on the site or NVFL_DOCKER_WORKSPACE)")
    if not os.path.isabs(configured) or os.path.normpath(configured) != configured or configured == "/":
        raise InvalidJobSpec("docker.workspace", f"{configured!r} must be a normalised absolute path other than '/'")
    workspace = os.path.realpath(configured)  # staff-configured: the one place symlinks are followed
    if not os.path.isdir(workspace):
        raise InvalidJobSpec("docker.workspace", f"{workspace} does not exist or is not a directory")
    for sub in ("startup", "local"):
        walk(workspace, f"{workspace}/{sub}", "docker.workspace")
    return workspace


def check_job_dir(workspace: str, job_id: str) -> None:
    """An existing job directory must be a real directory (no symlink) directly in the workspace;
    launch() creates a missing one."""
    exists_beneath(workspace, os.path.join(workspace, job_id), "job_id")


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
    """Host paths of the Docker sockets this backend may be talking to, as written and resolved."""
    candidates = [*DOCKER_SOCKETS, docker_host, os.environ.get("DOCKER_HOST", "")]
    paths = {c.removeprefix("unix://") for c in candidates if c and (c.startswith("unix://") or c.startswith("/"))}
    return paths | {os.path.realpath(p) for p in paths}


def _never_mountable(path: str, source: Any, field: str, docker_host: str) -> None:
    if path == "/" or any(under(socket, path) for socket in socket_paths(docker_host)):
        raise InvalidJobSpec(field, f"{source} is or contains the Docker socket and is never mounted")


def confined_source(
    source: Any, field: str, *, data_roots: Sequence[Root], workspace: str, docker_host: str
) -> str:
    """A dataset source that may be bind-mounted, as the path Docker receives. Decided lexically
    first (so a path outside the roots gets the same answer whether or not it exists), then walked
    without following symlinks: it must lie under an allowed data root, must not overlap the site
    workspace, and is never `/` or the Docker socket or a directory holding it."""
    path = lexical(source, field)
    _never_mountable(path, source, field, docker_host)
    found = rebase(path, data_roots)
    if found is None:
        allowed = ", ".join(root.configured for root in data_roots) or "none configured"
        raise InvalidJobSpec(field, f"{source} is outside the site's allowed data roots ({allowed})")
    root, real = found
    _never_mountable(real, source, field, docker_host)
    if workspace and overlaps(real, workspace):
        raise InvalidJobSpec(field, f"{source} overlaps the site workspace {workspace}, which is never mounted whole")
    walk(root.real, real, field, allow_file=True)
    return real


def dataset_mount(
    dataset: DatasetSpec, study: str, *, data_roots: Sequence[Root], workspace: str, docker_host: str
) -> dict[str, Any]:
    """The bind mount of one study dataset, after checking its names, mode and host source."""
    path = f"study.{study}.datasets.{dataset.name}"
    nvflare.check_name(dataset.study, f"{path}.study")
    nvflare.check_name(dataset.name, path)
    if dataset.study != study:
        raise InvalidJobSpec(f"{path}.study", f"belongs to study {dataset.study!r}, not {study!r}")
    if dataset.mode not in ("ro", "rw"):
        raise InvalidJobSpec(f"{path}.mode", "must be 'ro' or 'rw'")
    source = confined_source(dataset.source, f"{path}.source", data_roots=data_roots, workspace=workspace,
                             docker_host=docker_host)
    return bind(source, dataset.mount_path, read_only=dataset.mode == "ro")


def secret_mount(
    mount: SecretMount, study: str, *, data_roots: Sequence[Root], workspace: str, docker_host: str,
    taken: Sequence[str] = (),
) -> dict[str, Any]:
    """The read-only bind of a study secret mount (§5.2): its host source confined like a dataset
    source, its container path absolute, normalised and clear of the workspace root and of every
    target in `taken`. `items` is Kubernetes-only (NVFlare's message)."""
    path = f"study.{study}.secret_mounts.{mount.name}"
    nvflare.check_name(mount.name, path)
    if mount.items:
        raise InvalidJobSpec(f"{path}.items", "items is Kubernetes-only and is not supported by this launcher; "
                                              "point source at a directory containing only the intended files")
    target = mount.mount_path
    if not isinstance(target, str) or not target.startswith("/") or normpath(target) != target or target == "/":
        raise InvalidJobSpec(f"{path}.mount_path", f"{target!r} must be a normalised absolute path other than '/'")
    for other in (CONTAINER_ROOT, *taken):
        if overlaps(target, other):
            raise InvalidJobSpec(f"{path}.mount_path", f"{target} overlaps the job's mount at {other}")
    source = confined_source(mount.source, f"{path}.source", data_roots=data_roots, workspace=workspace,
                             docker_host=docker_host)
    return bind(source, target, read_only=True)


def shared_mount(
    directory: str, *, shared_root: Root | None, workspace: str, data_roots: Sequence[Root],
    dataset_sources: Sequence[str], docker_host: str,
) -> dict[str, Any]:
    """The read-write bind of a shared-file parent URL's directory (§2.1): strictly under the site's
    docker.shared_file_root, never overlapping the workspace (so not startup/ or local/ either), a
    data root or one of the study's dataset sources. Lexical checks come first."""
    if shared_root is None:
        raise InvalidJobSpec(SHARED_FIELD, "shared-file parent URLs are refused: the site sets no docker.shared_file_root")
    path = lexical(directory, SHARED_FIELD)
    found = rebase(path, [shared_root])
    if found is None or found[1] == shared_root.real:
        raise InvalidJobSpec(SHARED_FIELD, f"{directory} is not strictly inside docker.shared_file_root ({shared_root.configured})")
    real = found[1]
    _never_mountable(real, directory, SHARED_FIELD, docker_host)
    protected = [("the site workspace", workspace)]
    protected += [("the allowed data root", p) for root in data_roots for p in (root.configured, root.real)]
    protected += [("the study dataset source", source) for source in dataset_sources]
    for what, other in protected:
        if other and (overlaps(real, other) or overlaps(path, other)):
            raise InvalidJobSpec(SHARED_FIELD, f"{directory} overlaps {what} {other}; it is never mounted read-write")
    walk(shared_root.real, real, SHARED_FIELD)
    return bind(real, directory, read_only=False)


def check_nested(mounts: Sequence[dict[str, Any]]) -> None:
    """No bind source may lie inside another one that is mounted read-write: a job could swap it
    for a symlink there, and the next job would mount whatever the link names."""
    binds = [m for m in mounts if m.get("Type") == "bind"]
    for outer in binds:
        if outer.get("ReadOnly"):
            continue
        for inner in binds:
            if inner["Source"] != outer["Source"] and under(inner["Source"], outer["Source"]):
                raise InvalidJobSpec(
                    f"mounts.{inner['Target']}",
                    f"{inner['Source']} lies inside the read-write bind source {outer['Source']}; nested sources are refused",
                )


def ensure_job_dir(spec: LaunchSpec, workspace: str) -> None:
    """Create the job's host directory (owned by the container user) unless it already exists;
    created with mkdirat/fchownat in the workspace so no symlink is followed. Whether an existing
    entry is a real directory is checked by bind_pins() right after."""
    source = next(m["Source"] for m in spec.options["mounts"] if m.get("Target") == spec.workdir)
    if os.path.dirname(source) != workspace:
        raise BackendError(f"job directory {source} is not directly inside the workspace {workspace}")
    name = os.path.basename(source)
    fd = os.open(workspace, getattr(os, "O_PATH", os.O_RDONLY) | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            os.mkdir(name, 0o750, dir_fd=fd)
        except FileExistsError:
            return
        uid, gid = (int(part) for part in spec.options["user"].split(":"))
        os.chown(name, uid, gid, dir_fd=fd, follow_symlinks=False)
    finally:
        os.close(fd)


def bind_pins(spec: LaunchSpec, workspace: str, roots: Sequence[Root]) -> list[Pin]:
    """Every bind source of `spec`, walked from the deepest trusted root holding it and pinned to
    its (st_dev, st_ino). A source outside every trusted root is refused."""
    pins = []
    for mount in spec.options["mounts"]:
        if mount.get("Type") != "bind":
            continue
        source = mount["Source"]
        found = rebase(source, [r for r in roots if r.real])
        if found is None:
            raise InvalidJobSpec(f"mounts.{mount['Target']}", f"bind source {source} is outside the site's trusted roots")
        root = found[0]
        field = f"mounts.{mount['Target']}"
        pins.append(pin(root.real, found[1], field, allow_file=root.real != workspace))
    return pins
