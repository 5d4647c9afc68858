"""The Kubernetes backend's site settings (`Site.kubernetes`), validated, and the kubeconfig shape
check. No API calls here. Errors are InvalidJobSpec naming the field.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml

from backends import nvflare
from backends.base import InvalidJobSpec
from backends.kubernetes import manifests as km
from backends.kubernetes import pod_security as pss

KUBECONFIG_MAX_BYTES = 1024 * 1024
KUBECONFIG_SECTIONS = {"clusters": "cluster", "contexts": "context", "users": "user"}


def kubeconfig_problem(path: str) -> str | None:
    """Why the file at `path` cannot be a kubeconfig, or None. The kubernetes client's loader takes
    any YAML and fails on one that is not shaped like a kubeconfig with TypeError/AttributeError
    (a file holding a scalar, a list, or `contexts: 5`), which would surface as a 500; this checks
    the shape it relies on. A path that does not exist (yet) is not judged here: the connection
    check reports it."""
    try:
        info = os.stat(path)
    except ValueError:  # a NUL in the path
        return "is not a valid path"
    except OSError:
        return None
    if not stat.S_ISREG(info.st_mode):
        return "is not a regular file"
    if info.st_size > KUBECONFIG_MAX_BYTES:
        return f"is {info.st_size} bytes; a kubeconfig is at most {KUBECONFIG_MAX_BYTES} bytes here"
    try:
        with open(path, "rb") as f:
            data = yaml.safe_load(f.read(KUBECONFIG_MAX_BYTES + 1))
    except OSError:
        return None  # unreadable by this process: the connection check says so
    except (yaml.YAMLError, ValueError, RecursionError) as exc:
        return f"is not valid YAML ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})"
    if not isinstance(data, dict):
        found = "nothing" if data is None else f"a {type(data).__name__}"
        return f"does not hold a kubeconfig (a mapping with clusters, contexts and users) but {found}"
    current = data.get("current-context")
    if current is not None and not isinstance(current, str):
        return "has a current-context that is not a string"
    for section, body in KUBECONFIG_SECTIONS.items():
        entries = data.get(section)
        if entries is None:
            continue
        if not isinstance(entries, list):
            return f"has {section} that is not a list"
        for entry in entries:
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                return f"has an entry in {section} without a name"
            if not isinstance(entry.get(body), dict):
                return f"has {section} entry {entry['name']!r} whose {body} is not a mapping"
    return None


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True, kw_only=True)
class KubernetesSiteConfig:
    config_file_path: str | None = None  # kubeconfig; None -> in-cluster service account (loaded lazily)
    namespace: str = "default"
    timeout: float | None = None  # seconds a pod may take to reach Running (None: no limit)
    pending_timeout: float | None = 120  # seconds to wait for cpu/memory/gpu; jobs may only shorten it
    default_python_path: str = nvflare.DEFAULT_PYTHON_PATH
    security_context: Mapping[str, Any] = field(default_factory=dict)
    ephemeral_storage: str = "1Gi"
    workspace_mount_path: str = "/var/tmp/nvflare/workspace"
    image_pull_secrets: tuple[str, ...] = ()
    # Host path of the parent's startup kit, copied into a Secret before each pod; required for
    # NVFlare jobs (prepare refuses them without it), not for the launcher's own probe.
    startup_dir: str | None = None
    parent_fqcn: str | None = None  # NVFL_WORKSPACE_OWNER_FQCN when the parent sends none; None -> site name
    request_timeout: float = 10  # seconds for each API call (Celery tasks rely on it to stay bounded)
    pod_security: str = pss.DEFAULT_LEVEL  # staff-only: the Pod Security Standard study pod_templates must meet

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> KubernetesSiteConfig:
        data = dict(data or {})
        known = {f for f in cls.__dataclass_fields__}
        for key in data:
            if key not in known:
                raise InvalidJobSpec(f"kubernetes.{key}", "unknown setting")
        d = cls()
        path = data.get("config_file_path") or None
        if path is not None and not isinstance(path, str):
            raise InvalidJobSpec("kubernetes.config_file_path", "must be a file path or empty for in-cluster")
        problem = kubeconfig_problem(path) if path is not None else None
        if problem:
            raise InvalidJobSpec("kubernetes.config_file_path", f"{path} {problem}")
        namespace = data.get("namespace", d.namespace)
        if not isinstance(namespace, str) or not re.match(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$", namespace):
            raise InvalidJobSpec("kubernetes.namespace", "must be an RFC 1123 label such as 'default'")
        timeout = data.get("timeout")
        if timeout is not None and (not is_number(timeout) or timeout <= 0):
            raise InvalidJobSpec("kubernetes.timeout", "must be a positive number of seconds or null")
        pending = data.get("pending_timeout", d.pending_timeout)
        if pending is not None and (not is_number(pending) or pending < 0):
            raise InvalidJobSpec("kubernetes.pending_timeout", "must be a non-negative number of seconds or null")
        python_path = nvflare.check_python_path(
            data.get("default_python_path", d.default_python_path), "kubernetes.default_python_path")
        security_context = data.get("security_context") or {}
        if not isinstance(security_context, Mapping):
            raise InvalidJobSpec("kubernetes.security_context", "must be a mapping (pod securityContext)")
        storage = data.get("ephemeral_storage", d.ephemeral_storage)
        if not isinstance(storage, str) or not km.is_quantity(storage):
            raise InvalidJobSpec("kubernetes.ephemeral_storage", "must be a quantity such as '1Gi'")
        mount = data.get("workspace_mount_path", d.workspace_mount_path)
        if not isinstance(mount, str) or not mount.startswith("/"):
            raise InvalidJobSpec("kubernetes.workspace_mount_path", "must be an absolute path")
        secrets = data.get("image_pull_secrets") or []
        if not isinstance(secrets, (list, tuple)) or not all(isinstance(s, str) and s.strip() for s in secrets):
            raise InvalidJobSpec("kubernetes.image_pull_secrets", "must be a list of non-blank Secret names")
        startup_dir = data.get("startup_dir") or None
        if startup_dir is not None and (not isinstance(startup_dir, str) or not os.path.isabs(startup_dir)):
            raise InvalidJobSpec("kubernetes.startup_dir", "must be an absolute directory path")
        fqcn = data.get("parent_fqcn") or None
        if fqcn is not None and (not isinstance(fqcn, str) or not fqcn.strip()):
            raise InvalidJobSpec("kubernetes.parent_fqcn", "must be a non-blank string")
        request_timeout = data.get("request_timeout", d.request_timeout)
        if not is_number(request_timeout) or not 0 < request_timeout <= 120:
            raise InvalidJobSpec("kubernetes.request_timeout", "must be a positive number of seconds, at most 120")
        pod_security = data.get("pod_security") or d.pod_security
        if pod_security not in pss.LEVELS:
            raise InvalidJobSpec("kubernetes.pod_security", f"must be one of {', '.join(pss.LEVELS)}")
        return cls(
            config_file_path=path, namespace=namespace, timeout=timeout, pending_timeout=pending,
            default_python_path=python_path, security_context=dict(security_context),
            ephemeral_storage=storage, workspace_mount_path=mount.rstrip("/") or "/",
            image_pull_secrets=tuple(secrets), startup_dir=startup_dir, parent_fqcn=fqcn,
            request_timeout=request_timeout, pod_security=pod_security,
        )

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["security_context"] = dict(self.security_context)
        data["image_pull_secrets"] = list(self.image_pull_secrets)
        return data
