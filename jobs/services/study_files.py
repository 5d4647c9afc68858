"""A site's studies as NVFlare's own files: v1 `local/study_data.yaml` and v2 `local/study_runtime.yaml`.

Parsing is pure and mirrors NVFlare's loaders (nvflare/app_opt/job_launcher/study_data.py and
study_runtime.py, launch-semantics.md §5.1-§5.2): same checks, messages naming the study/dataset the
way they do. Replacing is all or nothing: the whole file is parsed first, then applied through the
catalog services inside one transaction, so one bad entry leaves the site unchanged.

v2 `secret_env` and `secret_mounts` are parsed as NVFlare does (jobs.services.study_secrets) and
stored as references (never values); `slurm` is parsed and then refused with NVFlare's message, as
every launcher but Slurm's refuses it. Mode-dependent rules (`items` Kubernetes-only) apply when the
site's backend is known (study_runtime_replace).
"""

from __future__ import annotations

import json
import re
from typing import Any

import yaml
from django.core.exceptions import ValidationError
from django.db import transaction

from jobs.models import Site, Study
from jobs.services import catalog
from jobs.services.study_secrets import (
    LAUNCHER_MODE,
    StudyFileError,
    known_keys_only,
    mapping,
    non_empty_string,
    parse_secret_env,
    parse_secret_mounts,
    parse_slurm,
    refuse_slurm,
)
from jobs.services.values import Unstorable, check_storable

__all__ = ["StudyFileError"]  # defined with the secret parsers; raised by everything here

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
MODES = ("ro", "rw")
FORMAT_VERSION = 2
STUDY_KEYS_V2 = ("container", "pod_template", "docker_kwargs", "datasets", "env", "secret_env", "secret_mounts", "slurm")
DATASET_KEYS_V2 = ("type", "source", "mode")
SECRET_FIELDS = ("secret_env", "secret_mounts")
RESERVED_DATASET_TYPES = ("databricks",)
V1_FILE = "study_data.yaml"
V2_FILE = "study_runtime.yaml"


YAML_MAX_BYTES = 1024 * 1024  # a study file is a few KiB; the API body limit is 1 MiB too
YAML_MAX_DEPTH = 40  # a Pod template nests about 8 levels
FIELD_MAX_BYTES = catalog.STUDY_FIELD_MAX_BYTES  # each study's docker_kwargs / env / pod_template, as JSON


class _LimitedLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (*name) and deep nesting: a few hundred bytes of nested
    aliases expand to gigabytes (a "billion laughs" bomb), and NVFlare's study files need neither."""

    _depth = 0

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, f"YAML aliases (*{event.anchor}) are not allowed here; "
                                              "write the value out", event.start_mark)
        self._depth += 1
        try:
            if self._depth > YAML_MAX_DEPTH:
                raise yaml.composer.ComposerError(None, None, f"nested deeper than {YAML_MAX_DEPTH} levels",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def yaml_load(text: str | bytes, what: str) -> Any:
    """Load YAML from a user: safe types only, no aliases, bounded size and depth, and only what a
    JSON column can store (jobs.services.values: finite numbers, no NUL or lone surrogates, string
    keys, no timestamps or binary). StudyFileError otherwise."""
    size = len(text.encode() if isinstance(text, str) else text)
    if size > YAML_MAX_BYTES:
        raise StudyFileError(f"could not parse {what}: it is {size} bytes; the limit is {YAML_MAX_BYTES} bytes.")
    try:
        data = yaml.load(text, Loader=_LimitedLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise StudyFileError(f"could not parse {what}: {_yaml_problem(exc)}") from None
    except RecursionError:
        raise StudyFileError(f"could not parse {what}: nested too deeply") from None
    except (ValueError, OverflowError) as exc:  # a constructor's: `2024-13-45`, an integer of 5000 digits
        raise StudyFileError(f"could not parse {what}: {exc}") from None
    try:
        return check_storable(data)
    except Unstorable as exc:
        raise StudyFileError(f"could not use {what}: {exc}.") from None


def _check_size(value: Any, label: str) -> None:
    size = len(json.dumps(value, separators=(",", ":"), default=str))
    if size > FIELD_MAX_BYTES:
        raise StudyFileError(f"{label} is {size} bytes as JSON; the limit is {FIELD_MAX_BYTES} bytes.")


def yaml_dump(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=False, allow_unicode=True)


def _yaml_problem(exc: yaml.YAMLError) -> str:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    return f"{problem} (line {mark.line + 1}, column {mark.column + 1})" if mark else str(problem)


# ---------------------------------------------------------------------------------------------
# v1: study -> dataset -> {source, mode}
# ---------------------------------------------------------------------------------------------


def study_data_parse(text: str | bytes) -> dict[str, dict[str, dict[str, str]]]:
    """Parse and validate a v1 study_data.yaml. An empty file means no studies."""
    return study_data_validate(yaml_load(text, V1_FILE))


def study_data_validate(data: Any) -> dict[str, dict[str, dict[str, str]]]:
    """The checks of NVFlare's load_study_data_file, on already-loaded YAML. Raises StudyFileError."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise StudyFileError(f"{V1_FILE} does not contain a dictionary (study -> dataset -> {{source, mode}}).")
    result: dict[str, dict[str, dict[str, str]]] = {}
    for study, datasets in data.items():
        _check_name(study, "study name")
        if not isinstance(datasets, dict):
            raise StudyFileError(
                f"{V1_FILE} uses study -> dataset -> {{source, mode}}; entry for study '{study}' must be a dictionary."
            )
        result[study] = {}
        for dataset, entry in datasets.items():
            _check_name(dataset, "dataset name")
            if not isinstance(entry, dict):
                raise StudyFileError(f"dataset entry '{study}/{dataset}' must be a dictionary with source and mode.")
            source = entry.get("source")
            if not isinstance(source, str) or not source:
                raise StudyFileError(f"dataset entry '{study}/{dataset}' must define a non-empty source.")
            mode = entry.get("mode")
            if mode not in MODES:
                raise StudyFileError(f"dataset entry '{study}/{dataset}' must set mode to 'ro' or 'rw'.")
            unknown = sorted(set(entry) - {"source", "mode"})
            if unknown:  # dashboard: stricter than NVFlare, which ignores them
                raise StudyFileError(f"dataset entry '{study}/{dataset}' has unknown key(s) {unknown}; allowed: ['mode', 'source'].")
            result[study][dataset] = {"source": source, "mode": mode}
    return result


def _check_name(value: Any, label: str) -> None:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise StudyFileError(f"{label} {value!r} is not a valid study-data path component "
                             "(1-63 lower-case letters, digits, '_' or '-', alphanumeric at both ends).")


def study_data_export(site: Site) -> dict[str, dict[str, dict[str, str]]]:
    return {
        study.name: {d.name: {"source": d.source, "mode": d.mode} for d in study.datasets.all()}
        for study in site.studies.prefetch_related("datasets").order_by("name")
    }


def study_data_dump(site: Site) -> str:
    """The site's study_data.yaml (v1), every study included (a study without datasets as `{}`)."""
    return yaml_dump(study_data_export(site))


def study_data_replace(site: Site, text: str | bytes | None = None, *, data: Any = None) -> dict:
    """Make the site's datasets exactly what the v1 file says. Studies missing from the site are
    created; studies missing from the file keep their other settings but lose their datasets.
    All or nothing: raises StudyFileError (file) or ValidationError (a value the catalog refuses,
    keyed `study/dataset.field`), and then nothing changed. Returns the parsed mapping."""
    parsed = study_data_parse(text) if text is not None else study_data_validate(data)
    runtime = {study: {"datasets": datasets} for study, datasets in parsed.items()}
    _apply(site, runtime, reset_other_settings=False)
    return parsed


# ---------------------------------------------------------------------------------------------
# v2: format_version 2, studies: {name: {container, pod_template, docker_kwargs, datasets, env}}
# ---------------------------------------------------------------------------------------------


def study_runtime_parse(text: str | bytes, *, backend: str | None = None) -> dict[str, dict[str, Any]]:
    """Parse and validate a v2 study_runtime.yaml into study -> {image, env, docker_kwargs,
    pod_template, datasets}, plus `secret_env` / `secret_mounts` for a study that has them
    (jobs.services.study_secrets gives their shape). `backend`: the site's, for NVFlare's
    mode-dependent rules. Raises StudyFileError (a `slurm` block always: no backend here is Slurm)."""
    return study_runtime_validate(yaml_load(text, V2_FILE), backend=backend)


def study_runtime_validate(data: Any, *, backend: str | None = None) -> dict[str, dict[str, Any]]:
    config = mapping(data, "file content")
    known_keys_only(config, ("format_version", "studies"), "top level")
    version = config.get("format_version")
    if type(version) is not int or version != FORMAT_VERSION:  # the string "2" is refused, as NVFlare
        raise StudyFileError(f"format_version must be {FORMAT_VERSION}, got {version!r}.")
    studies = config.get("studies")
    studies = mapping({} if studies is None else studies, "studies")
    return {_name(study, "study name"): _runtime_study(study, entry, backend) for study, entry in studies.items()}


def _runtime_study(study: str, entry: Any, backend: str | None = None) -> dict[str, Any]:
    label = f"studies.{study}"
    entry = mapping(entry, label)
    known_keys_only(entry, STUDY_KEYS_V2, label)
    if "slurm" in entry:  # parsed with NVFlare's schema first, so a malformed block says what is wrong
        parse_slurm(study, entry["slurm"])
        refuse_slurm(study, backend)
    result: dict[str, Any] = {"image": "", "env": {}, "docker_kwargs": {}, "pod_template": None, "datasets": {}}
    if "container" in entry:
        container = mapping(entry["container"], f"{label}.container")
        known_keys_only(container, ("image",), f"{label}.container")
        result["image"] = non_empty_string(container.get("image"), f"{label}.container.image")
    if "pod_template" in entry:
        template = entry["pod_template"]
        if isinstance(template, str):
            raise StudyFileError(f"{label}.pod_template must be an inline mapping here; a file path under local/ "
                                 "cannot be uploaded (paste the Pod manifest instead).")
        template = mapping(template, f"{label}.pod_template")
        if template.get("kind") and template.get("kind") != "Pod":
            raise StudyFileError(f"{label}.pod_template must define kind: Pod.")
        result["pod_template"] = template
    if "docker_kwargs" in entry:
        result["docker_kwargs"] = dict(mapping(entry["docker_kwargs"], f"{label}.docker_kwargs"))
    if "datasets" in entry:
        datasets = mapping(entry["datasets"], f"{label}.datasets")
        result["datasets"] = {_name(name, f"{label}.datasets.{name} dataset name"): _runtime_dataset(study, name, value)
                              for name, value in datasets.items()}
    if "env" in entry:
        result["env"] = _runtime_env(study, entry["env"])
    if "secret_env" in entry:
        result["secret_env"] = parse_secret_env(study, entry["secret_env"], result["env"])
    if "secret_mounts" in entry:
        result["secret_mounts"] = parse_secret_mounts(study, entry["secret_mounts"], LAUNCHER_MODE.get(backend or ""))
    for key in ("docker_kwargs", "pod_template", "env", *SECRET_FIELDS):
        if key not in result:
            continue
        _check_size(result[key], f"{label}.{key}")
    return result


def _runtime_dataset(study: str, dataset: str, entry: Any) -> dict[str, str]:
    label = f"studies.{study}.datasets.{dataset}"
    entry = mapping(entry, label)
    kind = entry.get("type", "mount")
    if kind in RESERVED_DATASET_TYPES:
        raise StudyFileError(f"{label} type '{kind}' is not yet supported.")
    if kind != "mount":
        raise StudyFileError(f"{label} has unknown type {kind!r}; allowed: 'mount'.")
    known_keys_only(entry, DATASET_KEYS_V2, label)
    source = non_empty_string(entry.get("source"), f"{label}.source")
    mode = entry.get("mode")
    if mode not in MODES:
        raise StudyFileError(f"{label}.mode must be 'ro' or 'rw'.")
    return {"source": source, "mode": mode}


def _runtime_env(study: str, entry: Any) -> dict[str, str]:
    entry = mapping(entry, f"studies.{study}.env")
    env = {}
    for name, value in entry.items():
        non_empty_string(name, f"studies.{study}.env variable name")
        if name in catalog.LAUNCHER_OWNED_ENV:
            raise StudyFileError(f"studies.{study}.env.{name} is launcher-owned and cannot be set in study config.")
        if isinstance(value, (dict, list)) or value is None:
            raise StudyFileError(f"studies.{study}.env.{name} must be a scalar value.")
        value = ("true" if value else "false") if isinstance(value, bool) else str(value)
        if not value:
            raise StudyFileError(f"studies.{study}.env.{name} must not be empty; set a value or remove the key.")
        env[name] = value
    return env


def _name(value: Any, label: str) -> str:
    if not isinstance(value, str) or not NAME_RE.match(value):
        raise StudyFileError(f"{label} {value!r} is not a valid name.")
    return value


def study_runtime_export(site: Site) -> dict[str, Any]:
    studies: dict[str, Any] = {}
    for study in site.studies.prefetch_related("datasets").order_by("name"):
        entry: dict[str, Any] = {}
        if study.image:
            entry["container"] = {"image": study.image}
        if study.pod_template:
            entry["pod_template"] = study.pod_template
        if study.docker_kwargs:
            entry["docker_kwargs"] = study.docker_kwargs
        datasets = {d.name: {"type": "mount", "source": d.source, "mode": d.mode} for d in study.datasets.all()}
        if datasets:
            entry["datasets"] = datasets
        if study.env:
            entry["env"] = study.env
        for key in SECRET_FIELDS:
            if getattr(study, key):
                entry[key] = getattr(study, key)
        studies[study.name] = entry
    return {"format_version": FORMAT_VERSION, "studies": studies}


def study_runtime_dump(site: Site) -> str:
    """The site's study_runtime.yaml (v2)."""
    return yaml_dump(study_runtime_export(site))


def study_runtime_replace(site: Site, text: str | bytes | None = None, *, data: Any = None, actor: Any = None) -> dict:
    """Make the site's studies exactly what the v2 file says: listed studies get its image, env,
    docker_kwargs, pod_template and datasets; studies not listed get an empty runtime (as NVFlare
    gives them) but keep their description. All or nothing, like study_data_replace."""
    parsed = (study_runtime_parse(text, backend=site.backend) if text is not None
              else study_runtime_validate(data, backend=site.backend))
    _apply(site, {name: {**EMPTY_SECRETS, **entry} for name, entry in parsed.items()}, reset_other_settings=True,
           actor=actor)  # actor: who may set which docker_kwargs
    return parsed


# ---------------------------------------------------------------------------------------------
# Applying a parsed file through the catalog services
# ---------------------------------------------------------------------------------------------

EMPTY_SECRETS = {key: {} for key in SECRET_FIELDS}  # a listed study without them loses any it had
EMPTY_RUNTIME = {"image": "", "env": {}, "docker_kwargs": {}, "pod_template": None, **EMPTY_SECRETS}


def _apply(site: Site, runtime: dict[str, dict[str, Any]], *, reset_other_settings: bool, actor: Any = None) -> None:
    # Every dataset source checked at once, where the site's data is (a worker: BackendError when none
    # answers), before the transaction: awaited inside it, SQLite's write lock would wait too.
    checked = catalog.dataset_sources_check(site, [d["source"] for entry in runtime.values()
                                                   for d in entry.get("datasets", {}).values()])
    with transaction.atomic():
        existing = {s.name: s for s in Study.objects.select_for_update().filter(site=site)}
        for name, study in existing.items():
            if name not in runtime:
                _apply_study(site, study, name, {**(EMPTY_RUNTIME if reset_other_settings else {}), "datasets": {}},
                             actor, checked)
        for name, entry in runtime.items():
            _apply_study(site, existing.get(name), name, entry, actor, checked)


def _apply_study(site: Site, study: Study | None, name: str, entry: dict[str, Any], actor: Any = None,
                 checked: dict[str, str | None] | None = None) -> None:
    settings = {k: v for k, v in entry.items() if k != "datasets"}
    with _prefixed(name):
        if study is None:
            study = catalog.study_create(site=site, name=name, actor=actor, **settings)
        elif settings:
            study = catalog.study_update(study=study, actor=actor, **settings)
    wanted = entry.get("datasets", {})
    current = {d.name: d for d in study.datasets.all()}
    for dataset_name, dataset in current.items():
        if dataset_name not in wanted:
            catalog.dataset_delete(dataset=dataset)
    for dataset_name, values in wanted.items():
        with _prefixed(f"{name}/{dataset_name}"):
            if dataset_name in current:
                catalog.dataset_update(dataset=current[dataset_name], checked=checked, **values)
            else:
                catalog.dataset_create(study=study, name=dataset_name, checked=checked, **values)


class _prefixed:
    """Re-key a catalog ValidationError so the message says which study/dataset it is about."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if isinstance(exc, ValidationError) and hasattr(exc, "error_dict"):
            raise ValidationError({f"{self.prefix}.{field}": messages for field, messages in exc.message_dict.items()}) from None
        return False
