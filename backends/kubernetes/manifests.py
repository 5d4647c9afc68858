"""Pure builders for the Kubernetes backend: names, labels, the job pod and its Secrets.

Nothing here talks to an API server; every function maps plain values to plain dicts in the
API's JSON shape (camelCase), so tests compare them with literal dicts (launch-semantics.md §4.2-§4.7).
backends/kubernetes/backend.py only sends what these functions build.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from backends.base import DatasetSpec, InvalidJobSpec, SecretEnvRef, SecretMount

NAME_MAX = 63  # RFC 1123 label
SITE_LABEL_MAX = 47
POD_SUFFIX_MAX = 20
MAIN_CONTAINER_SENTINEL = "nvflare_job"  # a pod_template marks its job container with this name
WORKSPACE_VOLUME = "workspace-job"
STARTUP_VOLUME = "startup-kit"
# The job container's name is recorded here so logs and exit codes find it among template sidecars.
MAIN_CONTAINER_ANNOTATION = "flare-launcher/main-container"
# The effective pending_timeout ("none" = wait forever), so any process inspecting the pod applies it.
PENDING_TIMEOUT_ANNOTATION = "flare-launcher/pending-timeout"
STARTUP_KIT_SUFFIXES = (".crt", ".key", ".pem", ".json")

# Kubernetes resource.Quantity, without the sign (a negative request makes no sense here).
QUANTITY_RE = re.compile(r"^(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+|[KMGTPE]i|[mkMGTPE])?$")
LABEL_VALUE_RE = re.compile(r"^(?:[A-Za-z0-9](?:[-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")


# ---------------------------------------------------------------------------------------------
# Names (§4.2)
# ---------------------------------------------------------------------------------------------


def job_label(job_id: str) -> str:
    """NVFlare's RFC 1123 job label: lower-case, [a-z0-9-] only, `j` before a leading digit,
    cut to 63, then trailing '-' stripped (in that order, as NVFlare does)."""
    body = re.sub(r"[^a-z0-9-]", "", job_id.lower())
    if body[:1].isdigit():
        body = "j" + body
    return body[:NAME_MAX].rstrip("-")


def site_label(name: str, max_length: int = SITE_LABEL_MAX) -> str:
    """`body-<sha256[:8]>` of at most `max_length` chars; distinct names stay distinct by hash."""
    digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:8]
    body = re.sub(r"[^a-z0-9-]", "", name.lower()).strip("-") or "site"
    if body[0].isdigit():
        body = "s" + body
    body = body[: max_length - 9].rstrip("-") or "site"
    return f"{body}-{digest}"


def pod_name(job_id: str, site: str) -> str:
    suffix = site_label(site, POD_SUFFIX_MAX)
    prefix = job_label(job_id)[: NAME_MAX - len(suffix) - 1].rstrip("-")
    return f"{prefix}-{suffix}" if prefix else suffix


def container_name(job_id: str) -> str:
    """`container-<job label>`, capped to 63 (dashboard: NVFlare lets it reach 73 characters)."""
    return f"container-{job_label(job_id)}"[:NAME_MAX].rstrip("-")


def startup_secret_name(site: str) -> str:
    return f"nvflare-startup-{site_label(site)}"


def credential_secret_name(pod: str) -> str:
    return f"nvflare-cred-{pod}"


def dataset_volume_name(study: str, dataset: str) -> str:
    return site_label(f"data-{study}-{dataset}", NAME_MAX)


def secret_volume_name(study: str, name: str) -> str:
    return site_label(f"secret-{study}-{name}", NAME_MAX)


def label_value(value: str) -> str:
    """A valid label value for `value`: kept when already valid, else sanitised with a hash suffix
    so two different inputs never share a value (selectors must not mix sites or jobs)."""
    value = str(value)
    if LABEL_VALUE_RE.match(value):
        return value
    digest = hashlib.sha256(value.encode("utf-8")).hexdigest()[:8]
    body = re.sub(r"[^A-Za-z0-9_.-]", "-", value)[: NAME_MAX - 9]
    body = re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", body)
    return f"{body}-{digest}" if body else digest


def sanitise_labels(labels: Mapping[str, str]) -> dict[str, str]:
    return {key: label_value(value) for key, value in labels.items()}


def is_quantity(value: str) -> bool:
    return bool(QUANTITY_RE.match(value))


# ---------------------------------------------------------------------------------------------
# The built-in pod (§4.3-§4.6)
# ---------------------------------------------------------------------------------------------


def resources_for(
    *,
    cpu: str | None = None,
    cpu_request: str | None = None,
    memory: str | None = None,
    memory_request: str | None = None,
    gpus: int = 0,
    ephemeral_storage: str,
) -> dict[str, dict[str, str]]:
    """§4.6: limit = job value, request = `<key>_request` else the limit, each only when truthy."""
    requests: dict[str, str] = {"ephemeral-storage": ephemeral_storage}
    limits: dict[str, str] = {"ephemeral-storage": ephemeral_storage}
    for key, limit, request in (("cpu", cpu, cpu_request), ("memory", memory, memory_request)):
        if limit:
            limits[key] = limit
        if request or limit:
            requests[key] = request or limit  # type: ignore[assignment]
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
    return {"requests": requests, "limits": limits}


@dataclass(frozen=True, kw_only=True)
class PodInputs:
    """Everything the built-in pod manifest depends on, already validated."""

    name: str
    namespace: str
    container: str
    image: str
    command: Sequence[str]  # the full argv; [0] is the python path
    labels: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)  # literal env, in order
    credential_env: Sequence[str] = ()  # env names read from the credential Secret
    credential_secret: str = ""
    datasets: Sequence[DatasetSpec] = ()
    secret_env: Sequence[SecretEnvRef] = ()  # study secret_env: secretKeyRef {name: source, key}
    secret_mounts: Sequence[SecretMount] = ()  # study secret_mounts: read-only Secret volumes
    resources: Mapping[str, Any] = field(default_factory=dict)
    image_pull_secrets: Sequence[str] = ()
    security_context: Mapping[str, Any] = field(default_factory=dict)
    ephemeral_storage: str = "1Gi"
    workspace_mount_path: str = "/var/tmp/nvflare/workspace"
    startup_secret: str | None = None
    pending_timeout: float | None = None


def build_pod(inputs: PodInputs) -> dict[str, Any]:
    """The launcher's own pod manifest (no template)."""
    mount = inputs.workspace_mount_path
    volumes: list[dict[str, Any]] = [
        {"name": WORKSPACE_VOLUME, "emptyDir": {"sizeLimit": inputs.ephemeral_storage}},
    ]
    mounts: list[dict[str, Any]] = [{"name": WORKSPACE_VOLUME, "mountPath": mount}]
    if inputs.startup_secret:
        volumes.append({"name": STARTUP_VOLUME, "secret": {"secretName": inputs.startup_secret}})
        mounts.append({"name": STARTUP_VOLUME, "mountPath": f"{mount}/startup", "readOnly": True})
    for ds in inputs.datasets:
        volume = dataset_volume_name(ds.study, ds.name)
        volumes.append({"name": volume, "persistentVolumeClaim": {"claimName": ds.source}})
        mounts.append({"name": volume, "mountPath": ds.mount_path, "readOnly": ds.mode == "ro"})
    for sm in inputs.secret_mounts:  # §4.4: after the datasets, always read-only
        volume = secret_volume_name(sm.study, sm.name)
        source: dict[str, Any] = {"secretName": sm.source}
        if sm.items:
            source["items"] = [{"key": key, "path": path} for key, path in sm.items]
        volumes.append({"name": volume, "secret": source})
        mounts.append({"name": volume, "mountPath": sm.mount_path, "readOnly": True})

    env: list[dict[str, Any]] = [{"name": k, "value": v} for k, v in inputs.env.items() if v != ""]
    env += [
        {"name": name, "valueFrom": {"secretKeyRef": {"name": inputs.credential_secret, "key": name}}}
        for name in inputs.credential_env
    ]
    env += [{"name": ref.name, "valueFrom": {"secretKeyRef": {"name": ref.source, "key": ref.key}}}
            for ref in inputs.secret_env]  # §4.5: after the credentials
    container: dict[str, Any] = {
        "name": inputs.container,
        "image": inputs.image,
        "command": [inputs.command[0]],
        "args": list(inputs.command[1:]),
        "imagePullPolicy": "Always",
        "volumeMounts": mounts,
        "resources": copy.deepcopy(dict(inputs.resources)),
    }
    if env:
        container["env"] = env
    spec: dict[str, Any] = {"restartPolicy": "Never", "containers": [container], "volumes": volumes}
    if inputs.image_pull_secrets:
        spec["imagePullSecrets"] = [{"name": s} for s in inputs.image_pull_secrets]
    if inputs.security_context:
        spec["securityContext"] = copy.deepcopy(dict(inputs.security_context))
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": inputs.name,
            "namespace": inputs.namespace,
            "labels": dict(inputs.labels),
            "annotations": {
                MAIN_CONTAINER_ANNOTATION: inputs.container,
                PENDING_TIMEOUT_ANNOTATION: "none" if inputs.pending_timeout is None else f"{inputs.pending_timeout:g}",
            },
        },
        "spec": spec,
    }


# ---------------------------------------------------------------------------------------------
# Site pod_template merge (§4.7)
# ---------------------------------------------------------------------------------------------


def merge_named(template_items: Any, launcher_items: Sequence[Mapping[str, Any]]) -> list[Any]:
    """Template order kept; a template item whose name matches a launcher item is replaced by it;
    unmatched named launcher items are appended, unnamed launcher items last."""
    by_name = {item["name"]: item for item in launcher_items if item.get("name")}
    used: set[str] = set()
    result: list[Any] = []
    for item in template_items or []:
        name = item.get("name") if isinstance(item, Mapping) else None
        if name in by_name:
            result.append(copy.deepcopy(by_name[name]))
            used.add(name)
        else:
            result.append(item)
    result += [copy.deepcopy(i) for i in launcher_items if i.get("name") and i["name"] not in used]
    result += [copy.deepcopy(i) for i in launcher_items if not i.get("name")]
    return result


def merge_pod_template(
    template: Any, built: Mapping[str, Any], *, field_name: str = "study.pod_template"
) -> tuple[dict[str, Any], list[str]]:
    """Lay the launcher's pod (`built`, from build_pod) over a site-owned template. Returns the
    merged manifest and warnings. Launcher-owned fields always win (§4.7)."""
    if not isinstance(template, Mapping):
        raise InvalidJobSpec(field_name, "must be a mapping (a Pod manifest)")
    if template.get("kind") not in (None, "Pod"):
        raise InvalidJobSpec(f"{field_name}.kind", f"must be Pod, got {template.get('kind')!r}")
    if template.get("apiVersion") not in (None, "v1"):
        raise InvalidJobSpec(f"{field_name}.apiVersion", "must be v1")
    warnings: list[str] = []
    pod = copy.deepcopy(dict(template))
    pod.pop("status", None)
    pod["apiVersion"], pod["kind"] = "v1", "Pod"
    metadata = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    if not isinstance(metadata, dict) or not isinstance(spec, dict):
        raise InvalidJobSpec(field_name, "metadata and spec must be mappings")
    pod["metadata"], pod["spec"] = metadata, spec
    containers = spec.get("containers") or [{}]
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise InvalidJobSpec(f"{field_name}.spec.containers", "must be a list of container mappings")
    spec["containers"] = containers

    b_meta, b_spec = built["metadata"], built["spec"]
    b_main = b_spec["containers"][0]
    main_names = (b_main["name"], MAIN_CONTAINER_SENTINEL)
    index = next((i for i, c in enumerate(containers) if c.get("name") in main_names), None)
    if index is None:
        if len(containers) > 1:
            raise InvalidJobSpec(
                f"{field_name}.spec.containers",
                f"several containers and none named {MAIN_CONTAINER_SENTINEL!r}: mark the main container",
            )
        index = 0

    if metadata.get("namespace") not in (None, b_meta["namespace"]):
        warnings.append(
            f"pod_template namespace {metadata['namespace']!r} ignored: pods run in {b_meta['namespace']!r}"
        )
    metadata["name"], metadata["namespace"] = b_meta["name"], b_meta["namespace"]
    metadata["labels"] = {**(metadata.get("labels") or {}), **b_meta["labels"]}
    metadata["annotations"] = {**(metadata.get("annotations") or {}), **b_meta["annotations"]}
    spec["restartPolicy"] = "Never"

    main = containers[index]
    for key in ("name", "image", "command", "args", "resources"):
        main[key] = copy.deepcopy(b_main[key])
    main.setdefault("imagePullPolicy", "Always")
    main["volumeMounts"] = merge_named(main.get("volumeMounts"), b_main["volumeMounts"])
    env = merge_named(main.get("env"), b_main.get("env", []))
    if env:
        main["env"] = env
    spec["volumes"] = merge_named(spec.get("volumes"), b_spec["volumes"])
    if b_spec.get("imagePullSecrets"):
        spec["imagePullSecrets"] = merge_named(spec.get("imagePullSecrets"), b_spec["imagePullSecrets"])
    if b_spec.get("securityContext"):
        spec["securityContext"] = copy.deepcopy(b_spec["securityContext"])
    return pod, warnings


# ---------------------------------------------------------------------------------------------
# Secrets (§4.4, §4.5)
# ---------------------------------------------------------------------------------------------


def credential_secret(
    *, name: str, namespace: str, labels: Mapping[str, str], values: Mapping[str, str]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "stringData": dict(values),
    }


def startup_secret(
    *, name: str, namespace: str, labels: Mapping[str, str], files: Mapping[str, bytes]
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": dict(labels)},
        "data": {k: base64.b64encode(v).decode("ascii") for k, v in sorted(files.items())},
    }


def owner_reference_patch(*, pod: str, uid: str) -> dict[str, Any]:
    """Merge patch that makes the credential Secret garbage-collected with its pod."""
    return {"metadata": {"ownerReferences": [{"apiVersion": "v1", "kind": "Pod", "name": pod, "uid": uid}]}}
