"""Pure pieces of the Docker backend (launch-semantics.md §2.1, §3): the typed site configuration,
the Docker-option allowlists, container names, mounts, parent-URL rewriting and GPU/resource merging.
The mapping from Docker's inspect data and events to Observations is in backends/docker_observe.py.

Nothing here talks to a daemon or reads the filesystem, so everything is tested against literal
dicts (tests/backends/test_docker_specs.py). `backends/docker.py` does the I/O, and the host path
checks are in backends/docker_mounts.py.
"""

from __future__ import annotations

import posixpath
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from docker.models.containers import RUN_CREATE_KWARGS, RUN_HOST_CONFIG_KWARGS

from backends import nvflare
from backends.base import InvalidJobSpec, LaunchSpec
from backends.paths import RESERVED_WORKSPACE_NAMES

CONTAINER_ROOT = "/var/tmp/nvflare/workspace"
DEFAULT_SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")

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
JOB_KEYS = ("entrypoint", "image", "num_of_gpus", "python_path", "shm_size")
# Env names only the launcher sets (§5.2): site and study env may not hold them.
LAUNCHER_ENV = frozenset(
    {"PYTHONPATH", "NVFL_WORKSPACE_OWNER_FQCN", "NVFL_WORKSPACE_TRANSFER_TOKEN",
     *nvflare.CREDENTIAL_ENV.values()}
)

SHM_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([bB]|[kKmMgG][bB]?)?$")
SHM_UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
INT64_MAX = 2**63 - 1
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
    allow_pull: bool = False
    docker_host: str = ""  # "" -> DOCKER_HOST / the default socket
    shared_file_root: str = ""  # host dir shared-file parent dirs must lie strictly under; "" -> refused
    allow_default_capabilities: bool = False  # keep Docker's default capability set (no cap_drop ALL)
    allow_privilege_escalation: bool = False  # no no-new-privileges (setuid binaries work in the job)

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
        for key in ("allow_root", "allow_job_images", "allow_host_ipc", "allow_pull",
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
            if data["network"] == "host":  # the host's network namespace, as network_mode: host (NEVER_ALLOWED)
                raise InvalidJobSpec("docker.network", "'host' shares the host's network namespace and is never allowed")
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
        if "shared_file_root" in data:
            values["shared_file_root"] = _check_shared_file_root(
                data["shared_file_root"], values.get("workspace", ""), values.get("docker_host", ""))
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return {
            name: dict(getattr(self, name)) if isinstance(getattr(self, name), Mapping) else getattr(self, name)
            for name in self.__dataclass_fields__
        }


def _check_host_dir(value: Any, path: str, *, allow_empty: bool = False) -> str:
    if allow_empty and value == "":
        return ""
    if not isinstance(value, str) or not value.startswith("/"):
        raise InvalidJobSpec(path, "must be an absolute host path")
    if value != "/" and value.endswith("/"):
        value = value.rstrip("/")
    if _normpath(value) != value or value == "/":
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
    sockets = [*DEFAULT_SOCKETS, posixpath.dirname(DEFAULT_SOCKETS[0]), posixpath.dirname(DEFAULT_SOCKETS[1])]
    if docker_host.startswith("unix://"):
        sockets.append(docker_host.removeprefix("unix://"))
    if any(_under(socket, root) for socket in sockets):
        raise InvalidJobSpec(path, f"{root} is or contains the Docker socket's directory")
    return root


def _under(path: str, base: str) -> bool:
    return path == base or path.startswith(base.rstrip("/") + "/")


def _normpath(value: str) -> str:
    normal = posixpath.normpath(value)
    return "/" + normal.lstrip("/") if normal.startswith("//") else normal


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
        if name in LAUNCHER_ENV:
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


# ---------------------------------------------------------------------------------------------
# Job-controlled options (§3.6)
# ---------------------------------------------------------------------------------------------


def check_job_options(block: Mapping[str, Any], path: str, *, may_choose_entrypoint: bool) -> dict[str, Any]:
    """The five keys a job may set in its docker launcher spec, validated and normalised."""
    unsupported = sorted(str(key) for key in block if key not in JOB_KEYS)
    if unsupported:
        raise InvalidJobSpec(
            f"{path}.{unsupported[0]}",
            f"unsupported job-controlled Docker option(s) {unsupported}; allowed: {', '.join(JOB_KEYS)}",
        )
    result: dict[str, Any] = {}
    if "image" in block:
        result["image"] = nvflare.check_image(block["image"], f"{path}.image")
    if "python_path" in block:
        result["python_path"] = nvflare.check_python_path(block["python_path"], f"{path}.python_path")
    if "num_of_gpus" in block:
        result["num_of_gpus"] = nvflare.check_int(block["num_of_gpus"], f"{path}.num_of_gpus", minimum=0)
    if "shm_size" in block:
        result["shm_size"] = parse_shm_size(block["shm_size"], f"{path}.shm_size")
    if "entrypoint" in block:
        if not may_choose_entrypoint:
            raise InvalidJobSpec(f"{path}.entrypoint", "job lacks locally authorized BYOC, so it may not choose an entrypoint")
        result["entrypoint"] = _check_entrypoint(block["entrypoint"], f"{path}.entrypoint")
    return result


def _check_entrypoint(value: Any, path: str) -> str | list[str]:
    if isinstance(value, str) and value.strip():
        return value
    if isinstance(value, (list, tuple)) and value and all(isinstance(v, str) and v.strip() for v in value):
        return list(value)
    raise InvalidJobSpec(path, "must be a non-blank string or a non-empty list of non-blank strings")


def parse_shm_size(value: Any, path: str) -> int:
    """NVFlare's shm_size rule: int in [0, 2^63-1], or a size string parsed as a float times its unit."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise InvalidJobSpec(path, "must be an integer number of bytes or a size string such as '2g'")
    if isinstance(value, int):
        if not 0 <= value <= INT64_MAX:
            raise InvalidJobSpec(path, f"must be between 0 and {INT64_MAX}")
        return value
    match = SHM_SIZE_RE.match(value)
    if not match:
        raise InvalidJobSpec(path, f"invalid size {value!r}; use a number with an optional b, k, m or g unit")
    number, unit = match.groups()
    size = float(number) * SHM_UNITS[(unit or "b")[0].lower()]
    if size > INT64_MAX:
        raise InvalidJobSpec(path, f"{value!r} is larger than {INT64_MAX} bytes")
    return int(size)


def merge_run_options(
    site_kwargs: Mapping[str, Any],
    study_kwargs: Mapping[str, Any],
    job: Mapping[str, Any],
    resources: Mapping[str, Any],
) -> dict[str, Any]:
    """§3.7: site defaults < study docker_kwargs < job (entrypoint, shm_size); then GPUs, cpus, memory."""
    merged = {**site_kwargs, **study_kwargs}
    for key in ("entrypoint", "shm_size"):
        if key in job:
            merged[key] = job[key]
    gpus = job.get("num_of_gpus", resources.get("num_of_gpus"))
    if gpus:
        merged["device_requests"] = [{"Count": gpus, "Capabilities": [["gpu"]]}]
    elif gpus == 0:
        merged.pop("device_requests", None)
    if "num_of_cpus" in resources:
        merged["nano_cpus"] = resources["num_of_cpus"] * 1_000_000_000
    if "memory" in resources:
        merged["mem_limit"] = nvflare.memory_bytes(resources["memory"])
    return merged


# ---------------------------------------------------------------------------------------------
# Names, URLs, mounts
# ---------------------------------------------------------------------------------------------


def container_name(site: str, job_id: str) -> str:
    """§3.2: lower(f"{site}-{job_id}"), other chars -> '-', outer '-' stripped, empty -> nvflare-job."""
    name = re.sub(r"[^a-z0-9_.-]", "-", f"{site}-{job_id}".lower()).strip("-")
    return name or "nvflare-job"


def check_workspace_child(name: Any, path: str = "job_id") -> str:
    """§3.3 name rules for the job dir (the symlink / escape checks need the filesystem)."""
    if (
        not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name
        or "\0" in name or _normpath(name) != name
    ):
        raise InvalidJobSpec(path, f"{name!r} must name a single workspace child (no path separators, '.' or '..')")
    if name in RESERVED_WORKSPACE_NAMES:
        raise InvalidJobSpec(path, f"{name!r} is a reserved workspace name")
    return name


def rewrite_parent_url(url: Any, conn_sec: Any, site: str) -> tuple[str, str | None]:
    """§2.1: returns (url for the job, host dir to bind for shared-file or None)."""
    path = "job_args.parent_url"
    security = "clear" if conn_sec in (None, "") else conn_sec
    if security not in ("clear", "mtls"):
        raise InvalidJobSpec("job_args.parent_conn_sec", f"must be 'clear' or 'mtls', got {security!r}")
    if not isinstance(url, str) or not url:
        raise InvalidJobSpec(path, "must be a URL such as tcp://host:port")
    parts = urlsplit(url)
    scheme = parts.scheme
    if scheme == "shared-file":
        if security != "clear":
            raise InvalidJobSpec(path, "shared-file needs parent_conn_sec 'clear'")
        directory = parts.path
        if not directory.startswith("/") or _normpath(directory) != directory or directory == "/":
            raise InvalidJobSpec(path, "shared-file needs a normalised absolute directory: shared-file://0/<dir>")
        if directory == CONTAINER_ROOT or directory.startswith(CONTAINER_ROOT + "/"):
            raise InvalidJobSpec(path, f"shared-file directory must not be under {CONTAINER_ROOT}")
        return url, directory
    if scheme not in ("tcp", "stcp"):
        raise InvalidJobSpec(path, f"unsupported scheme {scheme!r}; expected tcp, stcp or shared-file")
    if (scheme, security) not in (("tcp", "clear"), ("stcp", "mtls")):
        raise InvalidJobSpec(path, f"scheme {scheme} does not match parent_conn_sec {security!r} (tcp needs clear, stcp needs mtls)")
    try:
        port = parts.port
    except ValueError:
        raise InvalidJobSpec(path, "port must be numeric") from None
    if not parts.hostname or port is None:
        raise InvalidJobSpec(path, "needs a host and a port")
    rewritten = f"{scheme}://{site}:{port}{parts.path}"
    if parts.query:
        rewritten += f"?{parts.query}"
    if parts.fragment:
        rewritten += f"#{parts.fragment}"
    return rewritten, None


def bind(source: str, target: str, *, read_only: bool) -> dict[str, Any]:
    return {"Type": "bind", "Source": source, "Target": target, "ReadOnly": read_only}


def workspace_mounts(workspace: str, job_id: str) -> list[dict[str, Any]]:
    """§3.3 items 1-4, in order: tmpfs root, startup ro, local ro, the job's own dir rw."""
    return [
        {"Type": "tmpfs", "Target": CONTAINER_ROOT, "ReadOnly": False, "TmpfsOptions": {"Mode": 0o1777}},
        bind(f"{workspace}/startup", f"{CONTAINER_ROOT}/startup", read_only=True),
        bind(f"{workspace}/local", f"{CONTAINER_ROOT}/local", read_only=True),
        bind(f"{workspace}/{job_id}", f"{CONTAINER_ROOT}/{job_id}", read_only=False),
    ]


def create_kwargs(spec: LaunchSpec) -> dict[str, Any]:
    """What `containers.create()` receives: the resolved options plus the job's full environment.
    Credentials are joined here, at the last moment, so they live nowhere else."""
    return {**spec.options, "environment": {**spec.env, **spec.credentials}}
