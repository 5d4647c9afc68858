"""Dashboard forms. They only parse what a person typed; every rule lives in the services, whose
errors (ValidationError keyed by field, InvalidJobSpec naming a dotted field) are put back on the
matching form field by jobs.forms_checks.apply_form, so the page shows the same message as the API,
all of a submit's problems at once."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any

from django import forms
from django.core.exceptions import ValidationError

from backends import config_class
from jobs.forms_checks import (
    Incomplete,
    SummaryMixin,
    block_errors,
    root_errors,
    target_field,
)
from jobs.models import Backend, DatasetMode

BACKEND_MODE = {"docker": "docker", "kubernetes": "k8s", "process": "process"}
DEFAULT_EXE_MODULE = {
    "client": "nvflare.private.fed.app.client.worker_process",
    "server": "nvflare.private.fed.app.server.runner_process",
}


def validation_errors(exc: ValidationError) -> dict[str, list[str]]:
    return exc.message_dict if hasattr(exc, "error_dict") else {"__all__": exc.messages}


class JSONField(forms.CharField):
    """A JSON value typed into a textarea; blank -> `empty`."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"})

    def __init__(self, *, empty: Any = None, **kwargs):
        self.empty = empty
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, (dict, list)):
            return json.dumps(value, indent=2) if value else ""
        return value

    def clean(self, value):
        value = super().clean(value)
        if not value or not value.strip():
            return self.empty
        try:
            return json.loads(value)
        except ValueError as exc:
            raise ValidationError(f"Enter valid JSON ({exc.msg} at line {exc.lineno}).") from None


class KeyValueField(forms.CharField):
    """NAME=value lines -> dict."""

    widget = forms.Textarea(attrs={"rows": 3, "spellcheck": "false", "class": "mono"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        if isinstance(value, Mapping):
            return "\n".join(f"{k}={v}" for k, v in value.items())
        return value

    def clean(self, value):
        value = super().clean(value) or ""
        result, problems = {}, []
        for number, line in enumerate(value.splitlines(), 1):
            if not line.strip():
                continue
            name, sep, rest = line.partition("=")
            if not sep:
                problems.append(f"Line {number}: expected NAME=value.")
            result[name.strip()] = rest
        if problems:
            raise ValidationError(problems)
        return result


class LinesField(forms.CharField):
    widget = forms.Textarea(attrs={"rows": 2, "spellcheck": "false", "class": "mono"})

    def __init__(self, **kwargs):
        kwargs.setdefault("required", False)
        super().__init__(**kwargs)

    def prepare_value(self, value):
        return "\n".join(value) if isinstance(value, (list, tuple)) else value

    def clean(self, value):
        return [line.strip() for line in (super().clean(value) or "").splitlines() if line.strip()]


# ---------------------------------------------------------------------------------------------
# Launch
# ---------------------------------------------------------------------------------------------


class LaunchForm(SummaryMixin, forms.Form):
    site = forms.ChoiceField(label="Site")
    job_id = forms.CharField(label="NVFlare job id", max_length=128)
    study = forms.ChoiceField(label="Study", required=False)
    image = forms.CharField(label="Image", required=False, max_length=255,
                            help_text="Leave empty to use the study's image (Docker and Kubernetes only).")
    exe_module = forms.CharField(label="Job module (exe_module)", max_length=200, initial=DEFAULT_EXE_MODULE["client"])
    set_options = forms.CharField(label="--set options", required=False,
                                  help_text="Space-separated key=value items passed after --set.")
    options = JSONField(label="Extra launcher options (JSON)", empty={},
                        help_text='Merged into launcher_spec[site][mode], e.g. {"shm_size": "2g"}.')

    FIELD_MAP = {"job_id": "job_id", "job_meta.study": "study", "set_options": "set_options",
                 "job_args.": "exe_module", "job_meta.launcher_spec": "options", "job_meta.launcher_spec.": "options",
                 "job_meta.": "options", "study.": "study"}

    def __init__(self, *args, sites, studies, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["site"].choices = [(s.name, s.name) for s in sites]
        self.fields["study"].choices = [("", "(no study)")] + [(s.name, s.name) for s in studies]
        self.fields["job_id"].initial = str(uuid.uuid4())

    def clean_options(self):
        options = self.cleaned_data["options"]
        if not isinstance(options, dict):
            raise ValidationError("Must be a JSON object of launcher options.")
        return options

    def submission(self, site) -> dict[str, Any]:
        """job_meta and job_args as NVFlare's client parent would send them for this site."""
        data = self.cleaned_data
        mode = BACKEND_MODE[site.backend]
        launcher = dict(data["options"])
        if data["image"]:
            launcher["image"] = data["image"]
        job_meta: dict[str, Any] = {"job_id": data["job_id"], "name": data["job_id"]}
        if data["study"]:
            job_meta["study"] = data["study"]
        if launcher:
            job_meta["launcher_spec"] = {site.name: {mode: launcher}}
        workspace = _job_workspace(site)
        job_args = {
            "exe_module": ["-m", data["exe_module"]],
            "workspace": ["-m", workspace],
            "startup_dir": ["-w", f"{workspace}/startup"],
            "job_id": ["-n", data["job_id"]],
            "client_name": ["-c", site.name],
            "startup_config_file": ["-s", "fed_client.json"],
        }
        return {"job_id": data["job_id"], "job_meta": job_meta, "job_args": job_args,
                "set_options": data["set_options"].split() if data["set_options"] else None}


def _job_workspace(site) -> str:
    from jobs.services.sites import site_backend_settings

    if site.backend == "process":
        return site_backend_settings(site).get("workspace") or "/workspace"
    if site.backend == "kubernetes":
        return (site.kubernetes or {}).get("workspace_mount_path") or "/var/tmp/nvflare/workspace"
    return "/var/tmp/nvflare/workspace"


# ---------------------------------------------------------------------------------------------
# Site settings: one fieldset per backend, built from that backend's config dataclass
# ---------------------------------------------------------------------------------------------


def _field_for(kind: str, f: dataclasses.Field) -> forms.Field:
    default = f.default if f.default is not dataclasses.MISSING else (
        f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
    label = f.name.replace("_", " ").capitalize()
    if isinstance(default, bool):
        return forms.BooleanField(label=label, required=False)
    if isinstance(default, (dict, Mapping)):
        return JSONField(label=f"{label} (JSON object)", empty={})
    if isinstance(default, (list, tuple)):
        return LinesField(label=f"{label} (one per line)")
    return forms.CharField(label=label, required=False, max_length=1024,
                           help_text="" if default in (None, "") else f"Default: {default}")


def _number_or_text(value: str) -> Any:
    for cast in (int, float):
        try:
            return cast(value)
        except ValueError:
            pass
    return value


STAFF_MANAGED = "Managed by platform staff."


class SiteSettingsForm(SummaryMixin, forms.Form):
    """For staff every setting is editable. For a site admin (`staff=False`) the staff-only ones
    (jobs.services.policy) are shown disabled and keep their stored value when not submitted; a
    submitted different value is refused by the catalog with the API's message, on that field."""

    name = forms.CharField(label="Site name", max_length=63)
    backend = forms.ChoiceField(label="Backend", choices=Backend.choices)
    allowed_data_roots = LinesField(label="Allowed data roots (one absolute path per line)")

    def __init__(self, *args, site=None, staff: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.kinds: dict[str, list[str]] = {}
        self.defaults: dict[str, dict[str, Any]] = {}
        for kind in Backend.values:
            cls = config_class(kind)
            self.kinds[kind] = []
            for f in dataclasses.fields(cls):
                name = f"{kind}__{f.name}"
                self.fields[name] = _field_for(kind, f)
                self.kinds[kind].append(name)
            if site is not None:  # also when bound: locked fields fall back to these
                for key, value in (getattr(site, kind) or {}).items():
                    if f"{kind}__{key}" in self.fields:
                        self.initial[f"{kind}__{key}"] = "" if value is None else value
        if site is not None:
            self.initial.setdefault("name", site.name)
            self.initial.setdefault("backend", site.backend)
            self.initial.setdefault("allowed_data_roots", site.allowed_data_roots)
        self.locked = [] if staff else self._lock_staff_fields()

    def _lock_staff_fields(self) -> list[str]:
        from jobs.services.policy import SITE_ADMIN_SETTINGS

        locked = []
        for name, form_field in self.fields.items():
            kind, _, key = name.partition("__")
            if key in SITE_ADMIN_SETTINGS.get(kind, ()):
                continue
            locked.append(name)
            form_field.widget.attrs["disabled"] = True
            form_field.help_text = f"{form_field.help_text} {STAFF_MANAGED}".strip()
        if self.is_bound:  # browsers do not send disabled fields: those keep the stored value
            data = self.data.copy()
            for name in locked:
                if name in data:
                    continue
                value = self.initial.get(name)
                if isinstance(self.fields[name], forms.BooleanField):
                    if value:
                        data[name] = "on"
                elif value not in (None, "", {}, []):
                    prepared = self.fields[name].prepare_value(value)
                    data[name] = prepared if isinstance(prepared, str) else str(prepared)
            self.data = data
        return locked

    def fieldsets(self):
        return [(kind, [self[name] for name in names]) for kind, names in self.kinds.items()]

    def block(self, kind: str) -> dict[str, Any]:
        """The chosen backend's settings as the API takes them: blank text means "default"."""
        data = {}
        for name in self.kinds[kind]:
            key = name.split("__", 1)[1]
            value = self.cleaned_data.get(name)
            field = self.fields[name]
            if isinstance(field, forms.BooleanField):
                data[key] = bool(value)
            elif isinstance(field, (JSONField, LinesField)):
                if value:
                    data[key] = value
            elif value not in (None, ""):
                data[key] = _number_or_text(value.strip()) if _looks_numeric_field(kind, key) else value
        return data

    def clean_allowed_data_roots(self):
        roots = self.cleaned_data["allowed_data_roots"]
        # A locked (staff-only) field is judged by the service's policy first: "only staff may".
        problems = root_errors(roots) if "allowed_data_roots" not in self.locked else []
        if problems:
            raise ValidationError(problems)
        return roots

    def clean(self):
        """The chosen backend's block, every problem at once (the service stops at the first)."""
        data = super().clean()
        kind = data.get("backend")
        if kind in self.kinds:
            mapping = self.field_map()
            for key, reason in block_errors(kind, self.block(kind)):
                target = target_field(self, key, mapping)
                if target not in self.locked:
                    self.add_error(target, reason)
        return data

    def changes(self) -> dict[str, Any]:
        """What the service gets; after failed fields, the stored values (forms_checks.apply_form)."""
        values = self.values()
        kind = values.get("backend")
        if kind not in self.kinds:
            raise Incomplete("no valid backend")
        return {"name": values.get("name") or "", "backend": kind,
                "allowed_data_roots": values.get("allowed_data_roots") or [], kind: self.block(kind)}

    def field_map(self) -> dict[str, str]:
        mapping = {}
        for kind, names in self.kinds.items():
            mapping[f"{kind}."] = "backend"
            for name in names:
                mapping[f"{kind}.{name.split('__', 1)[1]}"] = name
                mapping[f"{kind}.{name.split('__', 1)[1]}."] = name
        return mapping


def _looks_numeric_field(kind: str, key: str) -> bool:
    cls = config_class(kind)
    f = cls.__dataclass_fields__[key]
    default = f.default
    return isinstance(default, (int, float)) and not isinstance(default, bool) or "timeout" in key


# ---------------------------------------------------------------------------------------------
# Studies, datasets, study data, tokens, probe
# ---------------------------------------------------------------------------------------------


class StudyForm(SummaryMixin, forms.Form):
    FIELD_MAP = {"docker_kwargs.": "docker_kwargs", "pod_template.": "pod_template"}

    name = forms.CharField(label="Study name", max_length=63)
    description = forms.CharField(label="Description", required=False, max_length=200)
    image = forms.CharField(label="Container image", required=False, max_length=255)
    env = KeyValueField(label="Environment (NAME=value per line)")
    docker_kwargs = JSONField(label="Docker run options (JSON, Docker sites)", empty={},
                              help_text="Site admins may set resource limits (mem_limit, nano_cpus, shm_size, "
                                        "pids_limit, ulimits, device_requests...); other options need platform staff.")
    pod_template = JSONField(label="Pod template (JSON, Kubernetes sites)", empty=None,
                             help_text="Must meet the site's pod_security level (default: restricted), set by platform staff.")

    def __init__(self, *args, backend: str = "process", **kwargs):
        super().__init__(*args, **kwargs)
        if backend != "docker":
            del self.fields["docker_kwargs"]
        if backend != "kubernetes":
            del self.fields["pod_template"]


class DatasetForm(SummaryMixin, forms.Form):
    name = forms.CharField(label="Dataset name", max_length=63)
    source = forms.CharField(label="Source (host path, or PVC name on Kubernetes)", max_length=1024)
    mode = forms.ChoiceField(label="Mode", choices=DatasetMode.choices, initial=DatasetMode.RO)


class StudyDataImportForm(SummaryMixin, forms.Form):
    text = forms.CharField(label="study_data.yaml", required=False,
                           widget=forms.Textarea(attrs={"rows": 12, "spellcheck": "false", "class": "mono"}))
    upload = forms.FileField(label="…or upload the file", required=False)

    def clean(self):
        data = super().clean()
        upload = data.get("upload")
        if upload:
            if upload.size > 512 * 1024:
                raise ValidationError("The file is larger than 512 KiB.")
            try:
                data["text"] = upload.read().decode("utf-8")
            except UnicodeDecodeError:
                raise ValidationError("The file is not UTF-8 text.") from None
        if not (data.get("text") or "").strip():
            raise ValidationError("Paste the YAML or choose a file.")
        return data


class TokenForm(SummaryMixin, forms.Form):
    name = forms.CharField(label="Token name", max_length=100, required=False,
                           help_text="What it is for, e.g. the FL client host.")


class ProbeForm(SummaryMixin, forms.Form):
    study = forms.ChoiceField(label="Study whose datasets to check")
    image = forms.CharField(label="Image", required=False, max_length=255,
                            help_text="Docker/Kubernetes: defaults to the study's image.")

    def __init__(self, *args, studies, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["study"].choices = [(s.name, s.name) for s in studies]
