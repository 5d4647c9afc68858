"""Site, study and dataset use-cases. Both the API and the dashboard forms call these, so a bad
value gets the same message everywhere: django ValidationError({field: [message]})."""

from __future__ import annotations

import os
import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from backends import config_class
from backends.base import InvalidJobSpec
from backends.paths import NEVER_MOUNTABLE, under_allowed_roots
from jobs.models import ACTIVE, Backend, Dataset, Site, Study

BACKEND_FIELDS = tuple(Backend.values)  # "docker", "kubernetes", "process": one JSON block each
# Env names a study may not set: the launcher owns them (launch-semantics.md §5.2).
LAUNCHER_OWNED_ENV = frozenset({
    "PYTHONPATH", "NVFL_WORKSPACE_OWNER_FQCN", "NVFL_WORKSPACE_TRANSFER_TOKEN",
    "NVFLARE_JOB_AUTH_TOKEN", "NVFLARE_JOB_TOKEN_SIGNATURE", "NVFLARE_JOB_SSID",
})
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
PVC_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


class SiteBusy(Exception):
    """A site with jobs still in flight cannot be deleted."""


# ---------------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------------


def site_create(*, name: str, backend: str = "process", allowed_data_roots: list[str] | None = None,
                **backend_settings: dict[str, Any]) -> Site:
    site = Site(name=name, backend=backend)
    return _site_apply(site, allowed_data_roots=allowed_data_roots or [], **backend_settings)


def site_update(*, site: Site, **changes: Any) -> Site:
    """Change any of name, backend, allowed_data_roots and the per-backend blocks."""
    if "name" in changes:
        site.name = changes.pop("name")
    if "backend" in changes:
        site.backend = changes.pop("backend")
    return _site_apply(site, **changes)


def _site_apply(site: Site, *, allowed_data_roots: list[str] | None = None, **blocks: dict[str, Any]) -> Site:
    unknown = set(blocks) - set(BACKEND_FIELDS)
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown settings block."]})
    if allowed_data_roots is not None:
        site.allowed_data_roots = _clean_roots(allowed_data_roots)
    for kind, data in blocks.items():
        setattr(site, kind, data if data is not None else {})
    errors: dict[str, list[str]] = {}
    for kind in BACKEND_FIELDS:
        data = getattr(site, kind) or {}
        if kind != site.backend and not data:
            continue
        try:
            setattr(site, kind, config_class(kind).from_dict(data).to_dict())
        except InvalidJobSpec as exc:
            errors.setdefault(exc.field, []).append(exc.reason)
    return _save_validated(site, errors)


def _save_validated(instance, errors: dict[str, list[str]]):
    """Add the model's own validation to `errors`; raise them all together, or save."""
    try:
        instance.full_clean()
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    instance.save()
    return instance


def _clean_roots(roots: Any) -> list[str]:
    if not isinstance(roots, list) or not all(isinstance(r, str) for r in roots):
        raise ValidationError({"allowed_data_roots": ["Must be a list of absolute directory paths."]})
    cleaned = []
    for root in roots:
        if not os.path.isabs(root):
            raise ValidationError({"allowed_data_roots": [f"{root!r} must be an absolute path."]})
        if os.path.realpath(root) in NEVER_MOUNTABLE:
            raise ValidationError({"allowed_data_roots": [f"{root} can never be a data root."]})
        cleaned.append(os.path.normpath(root))
    return cleaned


def site_delete(*, site: Site) -> None:
    """Refused (SiteBusy) while any of its jobs is not finished."""
    active = site.jobs.filter(state__in=ACTIVE).count()
    if active:
        raise SiteBusy(f"site {site.name} still has {active} job(s) in flight; terminate them first")
    with transaction.atomic():
        site.jobs.all().delete()
        site.delete()


# ---------------------------------------------------------------------------------------------
# Studies and datasets
# ---------------------------------------------------------------------------------------------


def study_create(*, site: Site, name: str, **fields: Any) -> Study:
    return _study_apply(Study(site=site, name=name), **fields)


def study_update(*, study: Study, **fields: Any) -> Study:
    return _study_apply(study, **fields)


def _study_apply(study: Study, **fields: Any) -> Study:
    allowed = {"name", "description", "image", "env", "docker_kwargs", "pod_template"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown study field."]})
    for key, value in fields.items():
        setattr(study, key, value if value is not None or key == "pod_template" else ("" if key in ("description", "image") else {}))
    return _save_validated(study, _study_errors(study))


def _study_errors(study: Study) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    if not isinstance(study.env, dict):
        errors["env"] = ["Must be a mapping of NAME -> value."]
    else:
        for key, value in study.env.items():
            if not ENV_NAME_RE.match(str(key)):
                errors.setdefault("env", []).append(f"{key!r} is not a valid environment variable name.")
            elif key in LAUNCHER_OWNED_ENV:
                errors.setdefault("env", []).append(f"{key} is launcher-owned and cannot be set by a study.")
            elif not isinstance(value, (str, int, float, bool)) or value == "":
                errors.setdefault("env", []).append(f"{key}: value must be a non-empty scalar.")
        study.env = {k: _env_value(v) for k, v in study.env.items()} if "env" not in errors else study.env
    if not isinstance(study.docker_kwargs, dict):
        errors["docker_kwargs"] = ["Must be a mapping of Docker run options."]
    if study.pod_template is not None and not isinstance(study.pod_template, dict):
        errors["pod_template"] = ["Must be a Pod manifest mapping."]
    if study.docker_kwargs and study.site.backend != "docker":
        errors.setdefault("docker_kwargs", []).append("docker_kwargs are Docker-only.")
    if study.pod_template and study.site.backend != "kubernetes":
        errors.setdefault("pod_template", []).append("pod_template is Kubernetes-only.")
    return errors


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as NVFlare's study runtime loader
    return str(value)


def study_delete(*, study: Study) -> None:
    study.delete()


def dataset_create(*, study: Study, name: str, source: str, mode: str = "ro") -> Dataset:
    return _dataset_apply(Dataset(study=study, name=name, source=source, mode=mode))


def dataset_update(*, dataset: Dataset, **fields: Any) -> Dataset:
    unknown = set(fields) - {"name", "source", "mode"}
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown dataset field."]})
    for key, value in fields.items():
        setattr(dataset, key, value)
    return _dataset_apply(dataset)


def _dataset_apply(dataset: Dataset) -> Dataset:
    errors: dict[str, list[str]] = {}
    try:
        dataset.full_clean()
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if "source" not in errors:
        message = dataset_source_error(dataset.study.site, dataset.source)
        if message:
            errors["source"] = [message]
    if errors:
        raise ValidationError(errors)
    dataset.save()
    return dataset


def dataset_source_error(site: Site, source: str) -> str | None:
    """Why `source` cannot be this site's dataset source, or None. Host paths (docker, process)
    must exist under the allowed roots; Kubernetes sources are PVC claim names."""
    if site.backend == "kubernetes":
        return None if PVC_NAME_RE.match(source or "") else f"{source!r} is not a valid PersistentVolumeClaim name."
    try:
        under_allowed_roots(source, site.allowed_data_roots or [], "source")
    except InvalidJobSpec as exc:
        return exc.reason[0].upper() + exc.reason[1:] + "."
    return None


def dataset_delete(*, dataset: Dataset) -> None:
    dataset.delete()
