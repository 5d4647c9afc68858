"""From a Site row to its backend, and the site-level use-cases."""

from __future__ import annotations

import threading
from typing import Any

from django.conf import settings

from backends import backend_class, config_class
from backends.base import Backend, DatasetSpec, InvalidJobSpec, SecretEnvRef, SecretMount, StudyRuntime
from jobs.models import Site, Study

_cache: dict[int, tuple[Any, Backend]] = {}
_cache_lock = threading.Lock()


def site_backend_settings(site: Site) -> dict[str, Any]:
    """The site's settings for its chosen backend, with embedded defaults filled in."""
    data = dict(site.backend_settings)
    if site.backend == "process" and not data.get("workspace"):
        data["workspace"] = str(settings.LAUNCHER_PROCESS_WORKSPACES / site.name)
    return data


def site_backend(site: Site) -> Backend:
    """The backend object for a site, cached per process and rebuilt whenever the site's settings
    change. The cache only saves engine clients (a Docker or Kubernetes API client and its
    connection pool): a backend keeps no job state, so a new object would behave the same."""
    # The settings too: a row changed without a save (queryset.update) or a rolled-back save keeps updated_at.
    key = (site.name, site.backend, site.updated_at, tuple(site.allowed_data_roots or ()),
           repr(site_backend_settings(site)))
    if site.pk is None:  # a site checked before it is first saved: nothing to reuse it for
        return _build(site)
    with _cache_lock:
        cached = _cache.get(site.pk)
        if cached and cached[0] == key:
            return cached[1]
        backend = _build(site)
        _cache[site.pk] = (key, backend)
        return backend


def _build(site: Site) -> Backend:
    config = config_class(site.backend).from_dict(site_backend_settings(site))
    return backend_class(site.backend)(site=site.name, config=config, allowed_data_roots=tuple(site.allowed_data_roots or ()))


def study_runtime(site: Site, study_name: str, *, check_sources: bool = True) -> StudyRuntime | None:
    """The study's runtime as the backends take it, or None when the job names no study or the
    site has no such study (as NVFlare: no mounts). `check_sources=False`: without
    study_sources_check, which the caller runs where the host paths are (jobs.services.submission)."""
    if not study_name:
        return None
    study = Study.objects.filter(site=site, name=study_name).prefetch_related("datasets").first()
    if study is None:
        return None
    runtime = StudyRuntime(
        name=study.name,
        datasets=tuple(DatasetSpec(study=study.name, name=d.name, source=d.source, mode=d.mode) for d in study.datasets.all()),
        image=study.image or None,
        env=dict(study.env or {}),
        docker_kwargs=dict(study.docker_kwargs or {}),
        pod_template=study.pod_template,
        secret_env=tuple(SecretEnvRef(name=name, source=ref["source"], key=ref["key"])
                         for name, ref in (study.secret_env or {}).items()),
        secret_mounts=tuple(
            SecretMount(study=study.name, name=name, source=m["source"], mount_path=m["mount_path"],
                        items=tuple(m["items"].items()) if m.get("items") else None)
            for name, m in (study.secret_mounts or {}).items()),
    )
    if check_sources:
        study_sources_check(site, runtime)
    return runtime


def study_sources_check(site: Site, study: StudyRuntime | None) -> None:
    """The save-time rule again at submit and launch (roots may have changed, or the workspace
    moved): each dataset source as the host where this runs sees it."""
    from jobs.services.catalog import dataset_source_error

    for d in study.datasets if study else ():
        problem = dataset_source_error(site, d.source)
        if problem:
            raise InvalidJobSpec(f"study.{study.name}.datasets.{d.name}.source", problem)

