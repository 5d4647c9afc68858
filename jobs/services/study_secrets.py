"""The v2 study_runtime.yaml keys that name secrets or another launcher: `secret_env`,
`secret_mounts` and `slurm`, parsed with NVFlare's rules (nvflare/app_opt/job_launcher/study_runtime.py,
launch-semantics.md §5.2). Pure: the site's own bounds (which launcher env vars a Docker study may
read, where a secret may come from) are checked when a study is saved (jobs.services.catalog) and
again at launch (the backends).

Parsed shapes, as stored on Study and exported again (the file's own shape, no secret values: only
references to them):
- secret_env: {NAME: {"source": str, "key": str}}
- secret_mounts: {name: {"source": str, "mount_path": str, "mode": "ro"}} plus "items": {key: path}
  when given (Kubernetes only).
"""

from __future__ import annotations

import posixpath
import re
from typing import Any

from backends.common import LAUNCHER_OWNED_ENV

NAME_RE = re.compile(r"^[a-z0-9](?:[a-z0-9_-]{0,61}[a-z0-9])?$")
SECRET_ENV_KEYS = ("source", "key")
SECRET_MOUNT_KEYS = ("source", "mount_path", "mode", "items")
SLURM_KEYS = ("sandbox", "python_path", "setup", "partition", "account", "qos")
SLURM_SANDBOXES = ("apptainer", "pyxis", "none")
# The backend's name -> NVFlare's launcher mode, for the mode-dependent rules.
LAUNCHER_MODE = {"docker": "docker", "kubernetes": "k8s", "process": "process"}


class StudyFileError(ValueError):
    """The file cannot be used; the message names the study/dataset and the reason."""


def parse_secret_env(study: str, entry: Any, env: dict[str, str]) -> dict[str, dict[str, str]]:
    """NAME: {source, key}, both non-empty strings (Docker and Kubernetes); NAME not launcher-owned
    and not also in the study's plain `env`."""
    label = f"studies.{study}.secret_env"
    entry = mapping(entry, label)
    refs = {}
    for name, ref in entry.items():
        item = f"{label}.{name}"
        non_empty_string(name, f"{item} variable name")
        if name in LAUNCHER_OWNED_ENV:
            raise StudyFileError(f"{item} variable name {name!r} is launcher-owned and cannot be set in study config.")
        ref = mapping(ref, item)
        known_keys_only(ref, SECRET_ENV_KEYS, item)
        refs[name] = {"source": non_empty_string(ref.get("source"), f"{item}.source"),
                      "key": non_empty_string(ref.get("key"), f"{item}.key")}
    duplicated = sorted(set(env) & set(refs))
    if duplicated:
        raise StudyFileError(f"studies.{study} defines {duplicated} in both env and secret_env.")
    return refs


def parse_secret_mounts(study: str, entry: Any, mode: str | None = None) -> dict[str, dict[str, Any]]:
    """name: {source, mount_path, mode (only 'ro'), items (Kubernetes only)}. `mode` is NVFlare's
    launcher mode of the site ("docker", "k8s", "process"); None: no mode-dependent check."""
    label = f"studies.{study}.secret_mounts"
    entry = mapping(entry, label)
    mounts = {}
    for name, mount in entry.items():
        item = f"{label}.{name}"
        if not isinstance(name, str) or not NAME_RE.match(name):
            raise StudyFileError(f"{item} mount name {name!r} is not a valid name.")
        mount = mapping(mount, item)
        known_keys_only(mount, SECRET_MOUNT_KEYS, item)
        if mount.get("mode", "ro") != "ro":
            raise StudyFileError(f"{item}.mode must be 'ro'; secret mounts are always read-only.")
        mount_path = non_empty_string(mount.get("mount_path"), f"{item}.mount_path")
        if not posixpath.isabs(mount_path):
            raise StudyFileError(f"{item}.mount_path must be an absolute path.")
        parsed: dict[str, Any] = {"source": "", "mount_path": mount_path, "mode": "ro"}
        items = mount.get("items")
        if items is not None:
            if mode is not None and mode != "k8s":
                raise StudyFileError(f"{item}.items is Kubernetes-only and is not supported by this launcher; "
                                     "point source at a directory containing only the intended files.")
            items = mapping(items, f"{item}.items")
            if not items:
                raise StudyFileError(f"{item}.items must not be empty; omit it for full projection.")
            parsed["items"] = {non_empty_string(key, f"{item}.items key"): non_empty_string(path, f"{item}.items.{key}")
                               for key, path in items.items()}
        parsed["source"] = non_empty_string(mount.get("source"), f"{item}.source")
        mounts[name] = parsed
    return mounts


def parse_slurm(study: str, entry: Any) -> dict[str, Any]:
    """NVFlare's schema of a study's `slurm` block (only a Slurm launcher uses it)."""
    label = f"studies.{study}.slurm"
    entry = mapping(entry, label)
    known_keys_only(entry, SLURM_KEYS, label)
    result = {}
    for key, value in entry.items():
        item = f"{label}.{key}"
        if key == "sandbox":
            if not isinstance(value, str) or value not in SLURM_SANDBOXES:
                raise StudyFileError(f"{item} must be one of {sorted(SLURM_SANDBOXES)}.")
        elif key == "python_path":
            value = _text(value, item)
            if not posixpath.isabs(value):
                raise StudyFileError(f"{item} must be an absolute path.")
            if "\n" in value or "\r" in value:
                raise StudyFileError(f"{item} must not contain newline.")
        elif key == "setup":
            value = _text(value, item, allow_empty=True)
        else:
            if isinstance(value, bool) or not isinstance(value, (str, int)) or value == "":
                raise StudyFileError(f"{item} must be a non-empty string or integer.")
            if isinstance(value, str) and any(c.isspace() for c in _text(value, item)):
                raise StudyFileError(f"{item} must not contain whitespace.")
        result[key] = value
    return result


def refuse_slurm(study: str, backend: str | None) -> None:
    """NVFlare's answer to a slurm block in any other launcher's study file (§5.2)."""
    where = f" (this site's backend is {backend})" if backend else ""
    raise StudyFileError(f"studies.{study}.slurm: slurm is Slurm-only and is not supported by this launcher{where}.")


def mapping(value: Any, label: str) -> dict:
    """The value itself when it is a mapping (the file's shape checks, shared with study_files)."""
    if not isinstance(value, dict):
        raise StudyFileError(f"{label} must be a mapping.")
    return value


def known_keys_only(entry: dict, known: tuple[str, ...], label: str) -> None:
    unknown = set(entry) - set(known)
    if unknown:
        raise StudyFileError(f"{label} has unknown key(s) {sorted(map(str, unknown))}; allowed: {sorted(known)}.")


def non_empty_string(value: Any, label: str) -> str:
    if not isinstance(value, str) or not value:
        raise StudyFileError(f"{label} must be a non-empty string.")
    return value


def _text(value: Any, label: str, *, allow_empty: bool = False) -> str:
    if not isinstance(value, str) or (not value and not allow_empty):
        raise StudyFileError(f"{label} must be {'a string' if allow_empty else 'a non-empty string'}.")
    if "\x00" in value:
        raise StudyFileError(f"{label} must not contain NUL.")
    return value
