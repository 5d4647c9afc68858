"""Site, study and dataset use-cases. Both the API and the dashboard forms call these, so a bad
value gets the same message everywhere: django ValidationError({field: [message]})."""

from __future__ import annotations

import copy
import json
import os
import re
from typing import Any

from django.core.exceptions import ValidationError
from django.db import transaction

from backends import config_class
from backends.base import BackendError, InvalidJobSpec
from backends.common import LAUNCHER_OWNED_ENV, NEVER_MOUNTABLE
from backends.docker.config import check_container_kwargs, check_secret_env_source
from backends.kubernetes import pod_security as pss
from jobs.models import ACTIVE, Backend, Dataset, Site, Study
from jobs.services import policy
from jobs.services.dataset_sources import (  # noqa: F401 - dataset_source_error, site_workspaces: the catalog's rules
    PVC_NAME_RE,
    dataset_source_error,
    dataset_sources_check,
    site_workspaces,
)

BACKEND_FIELDS = tuple(Backend.values)  # "docker", "kubernetes", "process": one JSON block each
STUDY_FIELD_MAX_BYTES = 64 * 1024  # each of a study's env, docker_kwargs and pod_template
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_FIELDS = ("secret_env", "secret_mounts")
# The launcher's own Secrets: per-job credentials (launch-semantics.md §4.5) and each site's startup
# kit (its private key); the same rule as backends.kubernetes.prepare applies at launch.
K8S_LAUNCHER_SECRET_PREFIXES = ("nvflare-cred-", "nvflare-startup-")


class SiteBusy(Exception):
    """A site with jobs still in flight cannot be deleted."""


# ---------------------------------------------------------------------------------------------
# Sites
# ---------------------------------------------------------------------------------------------


# `actor` is the user asking (None: a trusted caller such as a management command). Which settings
# need platform staff is decided in jobs.services.policy; a non-staff actor touching one gets
# policy.StaffOnly (a ValidationError keyed by field; the API answers it with 403) and nothing is saved.


# `save=False`: validate and return the site as it would be saved, unsaved (site_update: a copy, `site`
# is left as it is): what a save's engine checks judge before its transaction (jobs.services.site_checks).


def site_create(*, name: str, backend: str = "process", allowed_data_roots: list[str] | None = None,
                actor: Any = None, save: bool = True, **backend_settings: dict[str, Any]) -> Site:
    policy.require_staff(actor, "create sites")
    site = Site(name=name, backend=backend)
    return _site_apply(site, allowed_data_roots=allowed_data_roots or [], save=save, **backend_settings)


def site_update(*, site: Site, actor: Any = None, save: bool = True, **changes: Any) -> Site:
    """Change any of name, backend, allowed_data_roots and the per-backend blocks. A block replaces
    the stored one (missing keys take their defaults)."""
    if not save:
        site = copy.copy(site)
    before = policy.site_snapshot(site)
    before.update({kind: _normalised_block(kind, before[kind]) for kind in BACKEND_FIELDS})  # as compared after
    if "name" in changes:
        site.name = changes.pop("name")
    if "backend" in changes:
        site.backend = changes.pop("backend")
    return _site_apply(site, before=before, actor=actor, save=save, **changes)


def site_clean(site: Site) -> Site:
    """Validate and normalise a site in memory, without saving (the Django admin's forms)."""
    return _site_apply(site, allowed_data_roots=site.allowed_data_roots, save=False)


def _site_apply(site: Site, *, allowed_data_roots: list[str] | None = None, before: dict | None = None,
                actor: Any = None, save: bool = True, **blocks: dict[str, Any]) -> Site:
    unknown = set(blocks) - set(BACKEND_FIELDS)
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown settings block."]})
    for kind, data in blocks.items():
        setattr(site, kind, data if data is not None else {})
    if before is not None and not policy.is_staff(actor):  # refused before any value is judged
        roots = allowed_data_roots if allowed_data_roots is not None else site.allowed_data_roots
        after = {**policy.site_snapshot(site), "allowed_data_roots": _normalised_roots(roots)}
        after.update({kind: _normalised_block(kind, getattr(site, kind)) for kind in BACKEND_FIELDS})
        policy.check_site_change(actor, before, after)
    if allowed_data_roots is not None:
        site.allowed_data_roots = _clean_roots(allowed_data_roots)
    errors: dict[str, list[str]] = {}
    for kind in BACKEND_FIELDS:
        data = getattr(site, kind) or {}
        if kind != site.backend and not data:
            continue
        try:
            setattr(site, kind, config_class(kind).from_dict(data).to_dict())
        except InvalidJobSpec as exc:
            errors.setdefault(exc.field, []).append(exc.reason)
    return _save_validated(site, errors, save=save)


def _normalised_block(kind: str, data: Any) -> Any:
    """A block as it would be stored, or as given when invalid (missing keys then count as defaults)."""
    try:
        return config_class(kind).from_dict(data or {}).to_dict()
    except (InvalidJobSpec, TypeError, ValueError):
        return data


def _normalised_roots(roots: Any) -> Any:
    if isinstance(roots, list) and all(isinstance(r, str) and os.path.isabs(r) for r in roots):
        return [os.path.normpath(r) for r in roots]
    return roots


def _save_validated(instance, errors: dict[str, list[str]], *, save: bool = True, exclude=None):
    """Add the model's own validation to `errors`; raise them all together, or save."""
    try:
        instance.full_clean(exclude=exclude)
    except ValidationError as exc:
        for field, messages in exc.message_dict.items():
            errors.setdefault(field, []).extend(messages)
    if errors:
        raise ValidationError(errors)
    if save:
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


def site_delete(*, site: Site, actor: Any = None) -> None:
    """Staff only (its job records go with it). Refused (SiteBusy) while any of its jobs is not finished."""
    policy.require_staff(actor, "delete sites (their job records are deleted with them)")
    active = site.jobs.filter(state__in=ACTIVE).count()
    if active:
        raise SiteBusy(f"site {site.name} still has {active} job(s) in flight; terminate them first")
    with transaction.atomic():
        site.jobs.all().delete()
        site.delete()


# ---------------------------------------------------------------------------------------------
# Studies and datasets
# ---------------------------------------------------------------------------------------------


def study_create(*, site: Site, name: str, actor: Any = None, **fields: Any) -> Study:
    return _study_apply(Study(site=site, name=name), actor=actor, **fields)


def study_update(*, study: Study, actor: Any = None, **fields: Any) -> Study:
    return _study_apply(study, actor=actor, **fields)


def study_clean(study: Study, *, exclude=None) -> Study:
    """Validate a study in memory, without saving (the Django admin's forms)."""
    return _save_validated(study, _study_errors(study), save=False, exclude=exclude)


def _study_apply(study: Study, *, actor: Any = None, **fields: Any) -> Study:
    allowed = {"name", "description", "image", "env", "docker_kwargs", "pod_template", "secret_env", "secret_mounts"}
    unknown = set(fields) - allowed
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown study field."]})
    kwargs_before = dict(study.docker_kwargs or {}) if study.pk else {}
    secrets_before = {key: (getattr(study, key) or {}) if study.pk else {} for key in SECRET_FIELDS}
    for key, value in fields.items():
        setattr(study, key, value if value is not None or key == "pod_template" else ("" if key in ("description", "image") else {}))
    policy.check_docker_kwargs_change(actor, kwargs_before, study.docker_kwargs)
    if study.site.backend == "kubernetes" and not policy.is_staff(actor):
        # A Kubernetes source is any Secret of the namespace (a service account's token, the
        # startup kit...): naming one is staff's, as a pod template naming a Secret is.
        changed = [key for key in SECRET_FIELDS if (getattr(study, key) or {}) != secrets_before[key]]
        if changed:
            raise policy.StaffOnly(changed)
    return _save_validated(study, _study_errors(study))


def _study_errors(study: Study) -> dict[str, list[str]]:
    errors: dict[str, list[str]] = {}
    for name in ("env", "docker_kwargs", "pod_template", "secret_env", "secret_mounts"):
        size = len(json.dumps(getattr(study, name), separators=(",", ":"), default=str))
        if size > STUDY_FIELD_MAX_BYTES:  # kept in a row every viewer reads, and every launch copies
            errors[name] = [f"Is {size} bytes as JSON; the limit is {STUDY_FIELD_MAX_BYTES} bytes."]
    if errors:
        return errors
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
    if "docker_kwargs" not in errors and study.docker_kwargs:
        docker = _normalised_block("docker", study.site.docker)
        try:  # the launch-time checker (backends.docker.config), so a refused option fails here already
            check_container_kwargs(study.docker_kwargs, "docker_kwargs",
                                   allow_host_ipc=isinstance(docker, dict) and docker.get("allow_host_ipc") is True)
        except InvalidJobSpec as exc:
            errors["docker_kwargs"] = [f"{exc.field}: {exc.reason}"]
    errors.update(_secret_errors(study))
    if "pod_template" not in errors and study.pod_template:
        level = pod_security_level(study.site)
        violations = pss.template_violations(study.pod_template, level, prefix="pod_template")
        if violations:
            errors["pod_template"] = [f"Not allowed at the site's pod_security level {level!r} (set by platform staff): "
                                      + v for v in violations]
    return errors


def _secret_errors(study: Study) -> dict[str, list[str]]:
    """secret_env / secret_mounts: NVFlare's shape (study_secrets), then the site's bounds. Docker
    reads secret_env values from the launcher's own environment, so only variables staff listed in
    docker.secret_env_sources may be named; a secret mount's host source is confined like a
    dataset's. Kubernetes sources are Secret names, never a job's credential Secret. The process
    backend has neither."""
    from jobs.services.study_secrets import (
        LAUNCHER_MODE,
        StudyFileError,
        parse_secret_env,
        parse_secret_mounts,
    )

    site, errors = study.site, {}
    for field, parse in (("secret_env", lambda v: parse_secret_env(study.name, v, study.env or {})),
                         ("secret_mounts", lambda v: parse_secret_mounts(study.name, v, LAUNCHER_MODE[site.backend]))):
        value = getattr(study, field)
        if value is None:
            value = {}
            setattr(study, field, value)
        try:
            setattr(study, field, parse(value))
        except StudyFileError as exc:
            errors[field] = [str(exc)]
            continue
        if value and site.backend == "process":
            errors[field] = [f"{field} is supported on Docker and Kubernetes sites only (a local process has no "
                             "secret store or mounts)."]
    if errors:
        return errors
    for name, ref in study.secret_env.items():
        problem = _secret_source_error(site, ref["source"], env=True)
        if problem:
            errors.setdefault("secret_env", []).append(f"{name}.source: {problem}")
    for name, mount in study.secret_mounts.items():
        problem = _secret_source_error(site, mount["source"], env=False)
        if problem:
            errors.setdefault("secret_mounts", []).append(f"{name}.source: {problem}")
    return errors


def _secret_source_error(site: Site, source: str, *, env: bool) -> str | None:
    if site.backend == "kubernetes":
        if not PVC_NAME_RE.match(source) or source.startswith(K8S_LAUNCHER_SECRET_PREFIXES):
            return (f"{source!r} must name a Secret of the site's namespace (never the launcher's own "
                    "nvflare-cred-* or nvflare-startup-*).")
        return None
    if env:
        docker = _normalised_block("docker", site.docker)
        allowed = tuple(docker.get("secret_env_sources") or ()) if isinstance(docker, dict) else ()
        try:
            check_secret_env_source(source, allowed, "source")
        except InvalidJobSpec as exc:
            return exc.reason[0].upper() + exc.reason[1:] + "."
        return None
    try:  # where the site's data is, as a dataset source (a worker with LAUNCHER_ENGINE_VIA_WORKER)
        return dataset_sources_check(site, [source])[source]
    except BackendError as exc:  # refused, not a 500: study saves run inside their transaction
        return f"Could not check {source}: {exc}."


def pod_security_level(site: Site) -> str:
    level = (site.kubernetes or {}).get("pod_security") or pss.DEFAULT_LEVEL
    return level if level in pss.LEVELS else pss.DEFAULT_LEVEL


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"  # as NVFlare's study runtime loader
    return str(value)


def study_delete(*, study: Study) -> None:
    study.delete()


def dataset_create(*, study: Study, name: str, source: str, mode: str = "ro",
                   checked: dict[str, str | None] | None = None) -> Dataset:
    return _dataset_apply(Dataset(study=study, name=name, source=source, mode=mode), checked)


def dataset_update(*, dataset: Dataset, checked: dict[str, str | None] | None = None, **fields: Any) -> Dataset:
    unknown = set(fields) - {"name", "source", "mode"}
    if unknown:
        raise ValidationError({sorted(unknown)[0]: ["Unknown dataset field."]})
    for key, value in fields.items():
        setattr(dataset, key, value)
    return _dataset_apply(dataset, checked)


def _dataset_apply(dataset: Dataset, checked: dict[str, str | None] | None = None) -> Dataset:
    """`checked`: dataset_sources_check's answer, got before the caller's transaction (a worker
    awaited inside it would hold SQLite's write lock); a source it lacks is checked here."""
    errors: dict[str, list[str]] = {}
    try:
        dataset.full_clean()
    except ValidationError as exc:
        errors.update(exc.message_dict)
    if "source" not in errors:
        if checked is None or dataset.source not in checked:
            checked = dataset_sources_check(dataset.study.site, [dataset.source])
        if checked[dataset.source]:
            errors["source"] = [checked[dataset.source]]
    if errors:
        raise ValidationError(errors)
    dataset.save()
    return dataset


def dataset_delete(*, dataset: Dataset) -> None:
    dataset.delete()
