"""KubernetesBackend.prepare(): a JobRequest checked against launch-semantics.md §4 (stricter where
the doc says "dashboard:") and resolved into a LaunchSpec with its pod manifest (built by
manifests.py, a study pod_template checked by pod_security.py). No API calls here; backend.py sends
what this resolves. Errors are InvalidJobSpec naming the field.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

from kubernetes import client

from backends import nvflare
from backends.base import InvalidJobSpec, JobRequest, LaunchSpec, labels_for
from backends.common import LAUNCHER_OWNED_ENV, OWNER_FQCN_ENV, TRANSFER_TOKEN_ENV
from backends.kubernetes import manifests as km
from backends.kubernetes import pod_security as pss
from backends.kubernetes.config import KubernetesSiteConfig, is_number

log = logging.getLogger("backends.kubernetes")  # the name log lines had before the split

BACKEND_KIND = "kubernetes"  # KubernetesBackend.kind, and LaunchSpec.backend of its specs
JOB_KEYS = ("image", "python_path", "num_of_gpus", "cpu", "cpu_request", "memory", "memory_request",
            "ephemeral_storage", "pending_timeout")


def _quantity(value: Any, field_name: str) -> str | None:
    if value is None or value == "":
        return None
    if is_number(value) and value >= 0:
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
# A CellNet FQCN (`site-1`, `server`, `site-1.relay`) and a WorkspaceTransferManager token
# (secrets.token_urlsafe(24): 32 URL-safe characters).
FQCN_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.@-]{0,254}$")
TRANSFER_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{16,256}$")


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
    argv = nvflare.job_command(request.command, python_path, request.role, args,
                               nvflare.check_set_options(request.set_options))
    credentials = nvflare.credential_env(args)
    token, owner_fqcn = _workspace_transfer(args, request.command is not None)
    if token:
        credentials[TRANSFER_TOKEN_ENV] = token  # in the credential Secret, as NVFlare: never in the pod object
    if config.startup_dir is None and request.command is None:
        raise InvalidJobSpec("kubernetes.startup_dir", "required for NVFlare jobs on a Kubernetes site: the pod "
                                                       "mounts the FL parent's startup kit, a Secret made from it")

    env: dict[str, str] = {}
    for key, value in (study.env if study else {}).items():
        if key in LAUNCHER_OWNED_ENV:
            raise InvalidJobSpec(f"study.{study.name}.env.{key}", "launcher-owned environment variable")
        env[key] = str(value)
    mount = config.workspace_mount_path
    env["PYTHONPATH"] = f"{mount}/{job_id}/app_{site}/custom"
    env[OWNER_FQCN_ENV] = owner_fqcn or config.parent_fqcn or site
    datasets = tuple(study.datasets) if study else ()
    secret_env, secret_mounts = study_secrets(study, env, mount)
    for ds in datasets:
        path = f"study.{ds.study}.datasets.{ds.name}"
        if not isinstance(ds.source, str) or not CLAIM_RE.match(ds.source):
            raise InvalidJobSpec(f"{path}.source", f"must be a PersistentVolumeClaim name, got {ds.source!r}")
        if ds.mode not in ("ro", "rw"):
            raise InvalidJobSpec(f"{path}.mode", "must be 'ro' or 'rw'")

    name = km.pod_name(job_id, site)
    cred_name = km.credential_secret_name(name)
    labels = km.sanitise_labels(nvflare_labels(site, request))
    startup = km.startup_secret_name(site) if config.startup_dir else None  # mounted only when launch() makes it
    pod = km.build_pod(km.PodInputs(
        name=name, namespace=config.namespace, container=km.container_name(job_id), image=image,
        command=argv, labels=labels, env=env, credential_env=tuple(credentials), credential_secret=cred_name,
        datasets=datasets, secret_env=secret_env, secret_mounts=secret_mounts,
        resources=km.resources_for(**quantities, gpus=gpus, ephemeral_storage=storage),
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


SECRET_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")  # RFC 1123 subdomain
SECRET_KEY_RE = re.compile(r"^[-._a-zA-Z0-9]{1,253}$")
ENV_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Secrets the launcher makes: each job's credentials and each site's startup kit (private keys).
LAUNCHER_SECRET_PREFIXES = ("nvflare-cred-", "nvflare-startup-")


def study_secrets(study: Any, env: Mapping[str, str], workspace_mount: str) -> tuple[tuple, tuple]:
    """The study's secret_env and secret_mounts checked for Kubernetes (§4.4, §4.5; checked when
    the study is saved too, the site may have changed since): Secret and key names, never one of the
    launcher's own Secrets, env names neither launcher-owned nor also plain env, absolute mount paths
    outside the job's workspace, relative item paths."""
    if study is None:
        return (), ()
    base = f"study.{study.name}"
    for ref in study.secret_env:
        path = f"{base}.secret_env.{ref.name}"
        if not ENV_NAME_RE.match(ref.name) or ref.name in LAUNCHER_OWNED_ENV or ref.name in env:
            raise InvalidJobSpec(path, "must be an environment variable name that is neither launcher-owned nor "
                                       "also in the study's env")
        _check_secret_source(ref.source, f"{path}.source")
        if not SECRET_KEY_RE.match(ref.key):
            raise InvalidJobSpec(f"{path}.key", "must be a Secret key (letters, digits, '-', '_', '.')")
    mount_paths = set()
    for sm in study.secret_mounts:
        path = f"{base}.secret_mounts.{sm.name}"
        _check_secret_source(sm.source, f"{path}.source")
        normal = sm.mount_path.rstrip("/")
        if not sm.mount_path.startswith("/") or ".." in sm.mount_path.split("/") or normal in mount_paths:
            raise InvalidJobSpec(f"{path}.mount_path", "must be an absolute path, used by one secret mount only")
        if normal == workspace_mount or normal.startswith(workspace_mount.rstrip("/") + "/"):
            raise InvalidJobSpec(f"{path}.mount_path", f"must not be inside the job workspace {workspace_mount}")
        mount_paths.add(normal)
        for key, item_path in sm.items or ():
            if not SECRET_KEY_RE.match(key) or item_path.startswith("/") or ".." in item_path.split("/"):
                raise InvalidJobSpec(f"{path}.items.{key}", "must map a Secret key to a relative path without '..'")
    return tuple(study.secret_env), tuple(study.secret_mounts)


def _check_secret_source(source: Any, field_name: str) -> None:
    if not isinstance(source, str) or not SECRET_NAME_RE.match(source):
        raise InvalidJobSpec(field_name, "must name a Secret of the site's namespace")
    if source.startswith(LAUNCHER_SECRET_PREFIXES):
        raise InvalidJobSpec(field_name, f"{source!r} is one of the launcher's own Secrets "
                                         f"({', '.join(p + '*' for p in LAUNCHER_SECRET_PREFIXES)})")


def _workspace_transfer(args: Mapping[str, tuple[str, Any]], probe: bool) -> tuple[str | None, str | None]:
    """The FL parent's WorkspaceTransferManager registration of this job: (token, owner FQCN).
    NVFlare's pod downloads its workspace with them, so an NVFlare job needs the token; the
    launcher's own probe (a command override) runs without one. Values are never echoed."""
    values = {name: args[name][1] if name in args else None for name in nvflare.WORKSPACE_TRANSFER_ENV}
    token, owner = values["workspace_transfer_token"], values["workspace_owner_fqcn"]
    if token in (None, ""):
        if not probe:
            raise InvalidJobSpec("job_args.workspace_transfer_token", (
                "required on a Kubernetes site: the pod downloads its workspace from the FL parent with it; load "
                "flare_launcher_client.workspace_transfer.FlareLauncherKubernetesJobLauncher in the parent"))
        token = None
    elif not isinstance(token, str) or not TRANSFER_TOKEN_RE.match(token):
        raise InvalidJobSpec("job_args.workspace_transfer_token",
                             "must be the token of the parent's WorkspaceTransferManager (16-256 URL-safe characters)")
    if owner in (None, ""):
        owner = None
    elif not isinstance(owner, str) or not FQCN_RE.match(owner):
        raise InvalidJobSpec("job_args.workspace_owner_fqcn", "must be the FL parent's CellNet FQCN, e.g. 'site-1'")
    return token, owner


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
    if not is_number(value) or value < 0:
        raise InvalidJobSpec(field_name, f"must be a non-negative number of seconds, got {value!r}")
    if site_value is not None and value > site_value:
        raise InvalidJobSpec(field_name, f"may only shorten the site's pending_timeout of {site_value:g}s")
    return value

