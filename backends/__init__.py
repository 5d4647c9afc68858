"""Launch backends: plain Python behind one interface (backends.base.Backend). No Django imports.

Each backend module defines `<Kind>SiteConfig` (a frozen dataclass with `from_dict()` that raises
InvalidJobSpec naming the field, and `to_dict()`) and `<Kind>Backend(site=, config=, allowed_data_roots=)`.
"""

from __future__ import annotations

import importlib
from typing import Any

BACKEND_PATHS = {
    "process": ("backends.process", "ProcessBackend", "ProcessSiteConfig"),
    "docker": ("backends.docker", "DockerBackend", "DockerSiteConfig"),
    "kubernetes": ("backends.kubernetes", "KubernetesBackend", "KubernetesSiteConfig"),
}


def _load(kind: str, index: int) -> Any:
    try:
        module_name, *names = BACKEND_PATHS[kind]
    except KeyError:
        raise ValueError(f"unknown backend {kind!r}; expected one of {', '.join(BACKEND_PATHS)}") from None
    return getattr(importlib.import_module(module_name), names[index])


def backend_class(kind: str) -> Any:
    return _load(kind, 0)


def config_class(kind: str) -> Any:
    return _load(kind, 1)


def workload_name(kind: str, site: str, job_id: str) -> str:
    """The container, pod or process name a backend gives (site, job_id): LaunchSpec.name."""
    if kind == "kubernetes":
        from backends.kubernetes.manifests import pod_name

        return pod_name(job_id, site)
    from backends.common import workload_name as name  # docker and process name it alike

    return name(site, job_id)
