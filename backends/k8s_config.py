"""Kubernetes backend, pure part one: the site configuration and `prepare_spec()`, which turns a
JobRequest into a LaunchSpec with its pod manifest (launch-semantics.md §4). No API calls here;
`backends/kubernetes.py` sends what this resolves. Errors are InvalidJobSpec naming the field.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import yaml
from kubernetes import client

from backends import k8s_manifests as km
from backends import k8s_pod_security as pss
from backends import nvflare
from backends.base import InvalidJobSpec, JobRequest, LaunchSpec, labels_for

log = logging.getLogger("backends.kubernetes")  # the name log lines had before the split

BACKEND_KIND = "kubernetes"  # KubernetesBackend.kind, and LaunchSpec.backend of its specs
JOB_KEYS = ("image", "python_path", "num_of_gpus", "cpu", "cpu_request", "memory", "memory_request",
            "ephemeral_storage", "pending_timeout")
# Study env may not shadow what the launcher sets itself (§5.2).
LAUNCHER_OWNED_ENV = ("PYTHONPATH", km.OWNER_FQCN_ENV, km.TRANSFER_TOKEN_ENV, *nvflare.CREDENTIAL_ENV.values())


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


def _number(value: Any) -> bool:
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
    startup_dir: str | None = None  # host path of the parent's startup kit, copied into a Secret
    parent_fqcn: str | None = None  # NVFL_WORKSPACE_OWNER_FQCN; None -> the site name
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
        if timeout is not None and (not _number(timeout) or timeout <= 0):
            raise InvalidJobSpec("kubernetes.timeout", "must be a positive number of seconds or null")
        pending = data.get("pending_timeout", d.pending_timeout)
        if pending is not None and (not _number(pending) or pending < 0):
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
        if not _number(request_timeout) or not 0 < request_timeout <= 120:
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


def _quantity(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if _number(value) and value >= 0:
        return str(value) if value else None
    if isinstance(value, str) and km.is_quantity(value):
        return value
    raise InvalidJobSpec(field_name, f"must be a Kubernetes quantity such as '500m', '2' or '4Gi', got {value!r}")


# ---------------------------------------------------------------------------------------------
# prepare: job meta -> LaunchSpec (pure)
# ---------------------------------------------------------------------------------------------

PORTABLE_CONFLICTS = {"num_of_cpus": ("cpu", "cpu_request"), "memory": ("memory", "memory_request"),
                      "num_of_gpus": ("num_of_gpus",)}
CLAIM_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")


def prepare_spec(site: str, config: KubernetesSiteConfig, request: JobRequest) -> LaunchSpec:
    """Validate `request` against §4 (stricter where the doc says "dashboard:") and resolve the
    pod manifest. Raises InvalidJobSpec naming the field. No API calls."""
    job_id = nvflare.check_job_id(request.job_id)
    if request.role not in nvflare.ROLES:
        raise InvalidJobSpec("role", f"must be one of {', '.join(nvflare.ROLES)}")
    base = f"job_meta.launcher_spec.{site}.k8s"
    options = nvflare.resolve_launcher_spec(request.job_meta, site, "k8s")
    for key in options:
        if key not in JOB_KEYS:
            raise InvalidJobSpec(f"{base}.{key}", f"unsupported job-controlled Kubernetes option {key!r}; "
                                                  f"allowed: {', '.join(JOB_KEYS)}")
    portable = nvflare.portable_resources(request.job_meta, site)
    for portable_key, natives in PORTABLE_CONFLICTS.items():
        for native in natives:
            if portable_key in portable and native in options:
                raise InvalidJobSpec(f"{base}.{native}",
                                     f"conflicts with resource_spec {portable_key}: set only one of them")

    job_image = nvflare.check_image(options.get("image"), f"{base}.image")
    python_path = config.default_python_path
    if "python_path" in options:
        python_path = nvflare.check_python_path(options["python_path"], f"{base}.python_path")
    # As NVFlare's launchers (and the Docker backend): image/python_path BYOC is authorised when the
    # FL server deploys the job, not re-checked here (launch-semantics.md §1.4).
    study = request.study
    image = nvflare.resolve_image(job_image, study.image if study else None, job_id=job_id, site=site)

    gpus = portable.get("num_of_gpus", 0)
    if "num_of_gpus" in options:
        gpus = nvflare.check_int(options["num_of_gpus"], f"{base}.num_of_gpus", minimum=0)
    quantities = {key: _quantity(options.get(key), f"{base}.{key}")
                  for key in ("cpu", "cpu_request", "memory", "memory_request")}
    if "num_of_cpus" in portable:
        quantities["cpu"] = quantities["cpu_request"] = str(portable["num_of_cpus"])
    if "memory" in portable:
        quantities["memory"] = quantities["memory_request"] = portable["memory"]
    storage = options.get("ephemeral_storage")
    if storage is None:
        storage = config.ephemeral_storage
    elif not isinstance(storage, str) or not km.is_quantity(storage):
        raise InvalidJobSpec(f"{base}.ephemeral_storage", f"must be a quantity such as '2Gi', got {storage!r}")
    pending_timeout = _job_pending_timeout(options, config, f"{base}.pending_timeout")

    args = nvflare.normalise_job_args(request.job_args)
    argv = nvflare.render_command(python_path, request.role, args, nvflare.check_set_options(request.set_options))
    credentials = nvflare.credential_env(args)

    env: dict[str, str] = {}
    for key, value in (study.env if study else {}).items():
        if key in LAUNCHER_OWNED_ENV:
            raise InvalidJobSpec(f"study.{study.name}.env.{key}", "launcher-owned environment variable")
        env[key] = str(value)
    mount = config.workspace_mount_path
    env["PYTHONPATH"] = f"{mount}/{job_id}/app_{site}/custom"
    env[km.OWNER_FQCN_ENV] = config.parent_fqcn or site
    datasets = tuple(study.datasets) if study else ()
    for ds in datasets:
        path = f"study.{ds.study}.datasets.{ds.name}"
        if not isinstance(ds.source, str) or not CLAIM_RE.match(ds.source):
            raise InvalidJobSpec(f"{path}.source", f"must be a PersistentVolumeClaim name, got {ds.source!r}")
        if ds.mode not in ("ro", "rw"):
            raise InvalidJobSpec(f"{path}.mode", "must be 'ro' or 'rw'")

    name = km.pod_name(job_id, site)
    cred_name = km.credential_secret_name(name)
    labels = km.sanitise_labels(nvflare_labels(site, request))
    startup = km.startup_secret_name(site)
    pod = km.build_pod(km.PodInputs(
        name=name, namespace=config.namespace, container=km.container_name(job_id), image=image,
        command=argv, labels=labels, env=env, credential_env=tuple(credentials), credential_secret=cred_name,
        datasets=datasets, resources=km.resources_for(**quantities, gpus=gpus, ephemeral_storage=storage),
        image_pull_secrets=config.image_pull_secrets, security_context=config.security_context,
        ephemeral_storage=storage, workspace_mount_path=mount, startup_secret=startup,
        pending_timeout=pending_timeout,
    ))
    warnings: list[str] = []
    if study is not None and study.pod_template is not None:
        field_name = f"study.{study.name}.pod_template"
        violations = pss.template_violations(study.pod_template, config.pod_security, prefix=field_name)
        if violations:  # checked at save too; the site's level may have been lowered since
            raise InvalidJobSpec(field_name, f"breaks the site's pod_security level {config.pod_security}: "
                                             + "; ".join(violations))
        pod, warnings = km.merge_pod_template(study.pod_template, pod, field_name=field_name)
        try:
            client.V1Pod.model_validate(pod)  # the client refuses unknown fields: say so now, not at launch
        except ValueError as exc:
            raise InvalidJobSpec(field_name, f"not a valid Pod: {exc}") from exc
        for warning in warnings:
            log.warning("site %s job %s: %s", site, job_id, warning)
    return LaunchSpec(
        backend=BACKEND_KIND, site=site, job_pk=request.job_pk, job_id=job_id, role=request.role,
        name=name, image=image, command=tuple(argv), env=env, credentials=credentials, labels=labels,
        study=study.name if study else None, datasets=datasets, workdir=mount,
        options={
            "namespace": config.namespace,
            "pod": pod,
            "container": km.container_name(job_id),
            "credential_secret": {"name": cred_name, "keys": list(credentials)},
            "startup_secret": startup,
            "pending_timeout": pending_timeout,
            "timeout": config.timeout,
            "warnings": warnings,
        },
    )


def nvflare_labels(site: str, request: JobRequest) -> dict[str, str]:
    return labels_for(site=site, job_pk=request.job_pk, job_id=request.job_id,
                      study=request.study.name if request.study else None)


def _job_pending_timeout(options: Mapping[str, Any], config: KubernetesSiteConfig, field_name: str) -> float | None:
    """A job may shorten the site's pending_timeout, never lengthen or disable it."""
    site_value = config.pending_timeout
    if "pending_timeout" not in options:
        return site_value
    value = options["pending_timeout"]
    if value is None:
        if site_value is not None:
            raise InvalidJobSpec(field_name, f"may not disable the site's pending_timeout of {site_value:g}s")
        return None
    if not _number(value) or value < 0:
        raise InvalidJobSpec(field_name, f"must be a non-negative number of seconds, got {value!r}")
    if site_value is not None and value > site_value:
        raise InvalidJobSpec(field_name, f"may only shorten the site's pending_timeout of {site_value:g}s")
    return value

