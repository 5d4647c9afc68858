"""The Docker backend's site settings (`Site.docker`, launch-semantics.md §3.1 plus the dashboard's
stricter knobs), validated, and the checks of the site- and study-owned Docker run options and env
(§3.5). Pure: nothing here talks to a daemon or reads the filesystem (tests/backends/test_docker_specs.py).
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS

from backends import nvflare
from backends.base import InvalidJobSpec
from backends.common import DOCKER_SOCKETS, LAUNCHER_OWNED_ENV, normpath

SDK_KWARGS = frozenset(RUN_CREATE_KWARGS) | frozenset(RUN_HOST_CONFIG_KWARGS)
# §3.5: set by the launcher only; neither site defaults nor study docker_kwargs may hold them.
LAUNCHER_OWNED = frozenset(
    {"volumes", "mounts", "network", "environment", "command", "name", "detach", "auto_remove",
     "user", "working_dir", "image", "labels"}
)
# Root-equivalent options. NVFlare lets site kwargs carry them; the dashboard never does.
NEVER_ALLOWED = frozenset(
    {"privileged", "pid_mode", "network_mode", "cap_add", "devices", "device_cgroup_rules",
     "security_opt", "volumes_from"}
)
NO_HOST_NAMESPACE = frozenset({"userns_mode", "uts_mode", "cgroupns"})
USER_RE = re.compile(r"^([0-9]+):([0-9]+)$")
NETWORK_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
DOCKER_HOST_SCHEMES = ("unix://", "tcp://", "ssh://", "http://", "https://", "npipe://")


# ---------------------------------------------------------------------------------------------
# Site configuration
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DockerSiteConfig:
    """A site's Docker settings (§3.1 plus the dashboard's stricter knobs). Built by from_dict()."""

    workspace: str = ""  # host path; "" -> $NVFL_DOCKER_WORKSPACE at prepare time
    network: str = "nvflare-network"
    timeout: float = 30  # seconds: every daemon call (create, start, inspect...) is bounded by it
    default_python_path: str = nvflare.DEFAULT_PYTHON_PATH
    default_job_container_kwargs: Mapping[str, Any] = field(default_factory=dict)
    default_job_env: Mapping[str, str] = field(default_factory=dict)
    user: str = ""  # "uid:gid"; "" -> owner of the workspace directory
    allow_root: bool = False
    allow_job_images: bool = False  # job may choose an entrypoint without the site's BYOC marker
    allow_host_ipc: bool = False
    allow_host_network: bool = False  # network "host": the host's namespace (e.g. to keep job traffic on loopback)
    allow_pull: bool = False
    docker_host: str = ""  # "" -> DOCKER_HOST / the default socket
    shared_file_root: str = ""  # host dir shared-file parent dirs must lie strictly under; "" -> refused
    allow_default_capabilities: bool = False  # keep Docker's default capability set (no cap_drop ALL)
    allow_privilege_escalation: bool = False  # no no-new-privileges (setuid binaries work in the job)
    # The launcher env vars a study's secret_env may hand to jobs (staff only: secret_env reads the
    # launcher's own environment, which holds SECRET_KEY, DATABASE_URL...). Empty: none.
    secret_env_sources: tuple[str, ...] = ()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> DockerSiteConfig:
        if not isinstance(data, Mapping):
            raise InvalidJobSpec("docker", "must be a mapping of settings")
        data = dict(data)
        if "python_path" in data:
            if "default_python_path" in data:
                raise InvalidJobSpec("docker.python_path", "give default_python_path or its alias python_path, not both")
            data["default_python_path"] = data.pop("python_path")
        known = set(cls.__dataclass_fields__)
        for key in data:
            if key not in known:
                raise InvalidJobSpec(f"docker.{key}", f"unknown setting; expected one of {', '.join(sorted(known))}")
        values: dict[str, Any] = {}
        for key in ("allow_root", "allow_job_images", "allow_host_ipc", "allow_host_network", "allow_pull",
                    "allow_default_capabilities", "allow_privilege_escalation"):
            if key in data:
                if not isinstance(data[key], bool):
                    raise InvalidJobSpec(f"docker.{key}", "must be true or false")
                values[key] = data[key]
        if "workspace" in data:
            values["workspace"] = _check_host_dir(data["workspace"], "docker.workspace", allow_empty=True)
        if "network" in data:
            if not isinstance(data["network"], str) or not NETWORK_RE.match(data["network"]):
                raise InvalidJobSpec("docker.network", "must be a Docker network name")
            # The host's network namespace (network_mode: host, NEVER_ALLOWED in kwargs): only when staff
            # name it per site with allow_host_network.
            if data["network"] == "host" and not values.get("allow_host_network", False):
                raise InvalidJobSpec("docker.network", "'host' shares the host's network namespace and is never "
                                                       "allowed without the site setting allow_host_network")
            values["network"] = data["network"]
        if "timeout" in data:
            timeout = data["timeout"]
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout <= 120:
                raise InvalidJobSpec("docker.timeout", "must be a number of seconds > 0 and <= 120")
            values["timeout"] = timeout
        if "default_python_path" in data:
            values["default_python_path"] = nvflare.check_python_path(data["default_python_path"], "docker.default_python_path")
        if "default_job_env" in data:
            values["default_job_env"] = check_env(data["default_job_env"], "docker.default_job_env")
        allow_host_ipc = values.get("allow_host_ipc", False)
        if "default_job_container_kwargs" in data:
            values["default_job_container_kwargs"] = check_container_kwargs(
                data["default_job_container_kwargs"], "docker.default_job_container_kwargs", allow_host_ipc=allow_host_ipc
            )
        if "user" in data:
            values["user"] = check_user(data["user"], "docker.user", allow_root=values.get("allow_root", False))
        if "docker_host" in data:
            host = data["docker_host"]
            if not isinstance(host, str) or (host and not host.startswith(DOCKER_HOST_SCHEMES)):
                raise InvalidJobSpec("docker.docker_host", f"must be empty or a URL starting with one of {', '.join(DOCKER_HOST_SCHEMES)}")
            values["docker_host"] = host
        if "secret_env_sources" in data:
            values["secret_env_sources"] = _check_secret_env_sources(data["secret_env_sources"])
        if "shared_file_root" in data:
            values["shared_file_root"] = _check_shared_file_root(
                data["shared_file_root"], values.get("workspace", ""), values.get("docker_host", ""))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {name: _plain(getattr(self, name)) for name in self.__dataclass_fields__}


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return dict(value)
    return list(value) if isinstance(value, tuple) else value


ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Never a secret_env source, whatever staff list: the launcher's own secrets and settings (the
# Django/launcher settings, its database, broker and key material) and the job credentials.
LAUNCHER_SECRET_ENV = frozenset({"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "DOCKER_HOST", "KUBECONFIG"})
LAUNCHER_SECRET_PREFIXES = ("LAUNCHER_", "DJANGO_", "NVFLARE_", "NVFL_", "POSTGRES", "CELERY_")


def _check_secret_env_sources(value: Any) -> tuple[str, ...]:
    path = "docker.secret_env_sources"
    if not isinstance(value, (list, tuple)):
        raise InvalidJobSpec(path, "must be a list of environment variable names")
    for name in value:
        if not isinstance(name, str) or not ENV_NAME_RE.match(name):
            raise InvalidJobSpec(path, f"{name!r} is not an environment variable name")
        if launcher_secret(name):
            raise InvalidJobSpec(path, f"{name} is the launcher's own setting or secret and is never handed to a job")
    return tuple(dict.fromkeys(value))


def launcher_secret(name: str) -> bool:
    upper = name.upper()
    return upper in LAUNCHER_SECRET_ENV or upper.startswith(LAUNCHER_SECRET_PREFIXES) or upper.endswith("_FILE")


def check_secret_env_source(source: Any, allowed: tuple[str, ...], path: str) -> str:
    """A study secret_env `source` on Docker: the name of a launcher environment variable that the
    site's staff listed in docker.secret_env_sources (and never one of the launcher's own)."""
    if not isinstance(source, str) or not ENV_NAME_RE.match(source):
        raise InvalidJobSpec(path, f"{source!r} must name an environment variable of the launcher")
    if launcher_secret(source) or source not in allowed:
        shown = ", ".join(allowed) or "none"
        raise InvalidJobSpec(path, f"{source} is not one of the site's docker.secret_env_sources ({shown}), "
                                   "which platform staff set")
    return source


def _check_host_dir(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return ""
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidJobSpec(path, "must be an absolute host path")
    if value != "/" and value.endswith("/"):
        value = value.rstrip("/")
    if normpath(value) != value or value == "/":
        raise InvalidJobSpec(path, "must be a normalised absolute path (no '.', '..' or '//') other than '/'")
    return value


def _check_shared_file_root(value: Any, workspace: str, docker_host: str) -> str:
    """docker.shared_file_root: empty, or a normalised absolute dir that neither is, contains nor
    lies inside the workspace, and holds no Docker socket (checked as text; launch re-checks the
    resolved paths)."""
    path = "docker.shared_file_root"
    root = _check_host_dir(value, path, allow_empty=True)
    if not root:
        return ""
    if workspace and (_under(root, workspace) or _under(workspace, root)):
        raise InvalidJobSpec(path, f"{root} overlaps the workspace {workspace}")
    sockets = [*DOCKER_SOCKETS, *(posixpath.dirname(socket) for socket in DOCKER_SOCKETS)]
    if docker_host.startswith("unix://"):
        sockets.append(docker_host.removeprefix("unix://"))
    if any(_under(socket, root) for socket in sockets):
        raise InvalidJobSpec(path, f"{root} is or contains the Docker socket's directory")
    return root


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def check_user(value: Any, path: str, *, allow_root: bool) -> str:
    if value == "":
        return ""
    match = USER_RE.match(value) if isinstance(value, str) else None
    if not match:
        raise InvalidJobSpec(path, "must be 'uid:gid' with numeric ids, or empty for the workspace owner")
    if int(match.group(1)) == 0 and not allow_root:
        raise InvalidJobSpec(path, "uid 0 (root) is refused unless the site sets allow_root")
    return value


def check_env(value: Any, path: str) -> dict[str, str]:
    if not isinstance(value, Mapping):
        raise InvalidJobSpec(path, "must be a mapping of NAME -> string value")
    for name, item in value.items():
        if not isinstance(name, str) or not name or "=" in name or "\0" in name:
            raise InvalidJobSpec(f"{path}.{name}", "invalid environment variable name")
        if name in LAUNCHER_OWNED_ENV:
            raise InvalidJobSpec(f"{path}.{name}", "is launcher-owned and cannot be set here")
        if not isinstance(item, str):
            raise InvalidJobSpec(f"{path}.{name}", f"must be a string, got {type(item).__name__}")
    return dict(value)


def check_container_kwargs(value: Any, path: str, *, allow_host_ipc: bool) -> dict[str, Any]:
    """Site defaults and study docker_kwargs (both site-owned): SDK-known keys only, never the
    launcher-owned ones, never options that break container isolation."""
    if not isinstance(value, Mapping):
        raise InvalidJobSpec(path, "must be a mapping of Docker run options")
    for key, item in value.items():
        where = f"{path}.{key}"
        if key in LAUNCHER_OWNED:
            raise InvalidJobSpec(where, f"{key!r} is launcher-owned and cannot be set here")
        if key not in SDK_KWARGS:
            raise InvalidJobSpec(where, f"{key!r} is not supported by the installed Docker SDK")
        if key in NEVER_ALLOWED:
            raise InvalidJobSpec(where, f"{key!r} weakens container isolation and is never allowed")
        if key in NO_HOST_NAMESPACE and item == "host":
            raise InvalidJobSpec(where, f"{key!r}: 'host' shares a host namespace and is never allowed")
        if key == "ipc_mode" and isinstance(item, str):
            if item.startswith("container:"):
                raise InvalidJobSpec(where, "'ipc_mode': sharing another container's IPC namespace is never allowed")
            if item == "host" and not allow_host_ipc:
                raise InvalidJobSpec(where, "'ipc_mode': 'host' needs the site setting allow_host_ipc")
        if _mentions_docker_socket(item):
            raise InvalidJobSpec(where, f"{key!r} refers to the Docker socket, which is never exposed to a job")
    return dict(value)


def _mentions_docker_socket(value: Any) -> bool:
    if isinstance(value, str):
        return "docker.sock" in value
    if isinstance(value, Mapping):
        return any(_mentions_docker_socket(k) or _mentions_docker_socket(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return any(_mentions_docker_socket(v) for v in value)
    return False
