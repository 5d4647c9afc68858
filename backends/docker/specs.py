"""Pure pieces of a Docker job's launch spec (launch-semantics.md §2.1, §3): the job-controlled
options, run-option merging with GPUs and resources, parent-URL rewriting and the workspace mounts.
The site configuration is in backends/docker/config.py, the mapping from Docker's inspect data and
events to Observations in backends/docker/observe.py.

Nothing here talks to a daemon or reads the filesystem, so everything is tested against literal
dicts (tests/backends/test_docker_specs.py). The host path checks are in backends/docker/mounts.py.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from backends import nvflare
from backends.base import InvalidJobSpec, LaunchSpec
from backends.common import normpath

CONTAINER_ROOT = "/var/tmp/nvflare/workspace"
JOB_KEYS = ("entrypoint", "image", "num_of_gpus", "python_path", "shm_size")
SHM_SIZE_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)([bB]|[kKmMgG][bB]?)?$")
SHM_UNITS = {"b": 1, "k": 2**10, "m": 2**20, "g": 2**30}
INT64_MAX = 2**63 - 1


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
# URLs, mounts
# ---------------------------------------------------------------------------------------------


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
        if not directory.startswith("/") or normpath(directory) != directory or directory == "/":
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
