"""deploy/kubernetes/ checked against the Kubernetes API's own schema (the `kubernetes` client's
models) and against the Pod Security Standards `restricted` profile (backends.kubernetes.pod_security).

The client's models (pydantic) reject missing required fields and wrong types, but silently drop
keys they do not know, so a typo (`containerport`, `readinessprobe`) would pass: `schema_errors`
walks each document along the models' openapi_types / attribute_map and rejects every unknown key,
then deserializes it with ApiClient for the required fields and types."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest
import yaml
from kubernetes.client import ApiClient, models

from backends.kubernetes.pod_security import pod_violations

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = sorted((ROOT / "deploy/kubernetes").glob("*.y*ml"))
# kind -> apiVersion it is served under (GA versions); a kind not listed fails, so add it here.
API_VERSIONS = {
    "ConfigMap": "v1", "Namespace": "v1", "PersistentVolumeClaim": "v1", "Secret": "v1", "Service": "v1",
    "ServiceAccount": "v1",
    "DaemonSet": "apps/v1", "Deployment": "apps/v1", "StatefulSet": "apps/v1",
    "CronJob": "batch/v1", "Job": "batch/v1",
    "ClusterRole": "rbac.authorization.k8s.io/v1", "ClusterRoleBinding": "rbac.authorization.k8s.io/v1",
    "Role": "rbac.authorization.k8s.io/v1", "RoleBinding": "rbac.authorization.k8s.io/v1",
    "Ingress": "networking.k8s.io/v1", "NetworkPolicy": "networking.k8s.io/v1",
    "PodDisruptionBudget": "policy/v1", "HorizontalPodAutoscaler": "autoscaling/v2",
}
PRIMITIVES = {
    "str": (str,), "int": (int,), "float": (int, float), "bool": (bool,), "bytes": (str,),
    "datetime": (str, datetime.datetime), "date": (str, datetime.date), "object": (object,),
}


def documents() -> list[tuple[str, dict]]:
    out = []
    for path in MANIFESTS:
        for i, doc in enumerate(yaml.safe_load_all(path.read_text())):
            if doc is not None:
                out.append((f"{path.name}#{i} {doc.get('kind')}/{(doc.get('metadata') or {}).get('name')}", doc))
    return out


def _walk(value, type_name: str, path: str) -> list[str]:
    if value is None:
        return []  # null is "unset"; required fields are ApiClient's check
    if type_name.startswith("List["):
        if not isinstance(value, list):
            return [f"{path}: expected a list"]
        return [e for i, item in enumerate(value) for e in _walk(item, type_name[5:-1], f"{path}[{i}]")]
    if type_name.startswith("Dict["):
        if not isinstance(value, dict):
            return [f"{path}: expected a mapping"]
        inner = type_name[5:-1].split(",", 1)[1].strip()
        return [e for key, item in value.items() for e in _walk(item, inner, f"{path}.{key}")]
    if type_name in PRIMITIVES:
        ok = isinstance(value, PRIMITIVES[type_name]) and not (type_name in ("int", "float") and isinstance(value, bool))
        return [] if ok else [f"{path}: expected {type_name}, got {type(value).__name__} {value!r}"]
    model = getattr(models, type_name)
    if not isinstance(value, dict):
        return [f"{path}: expected a {type_name} mapping"]
    fields = {json_key: attr for attr, json_key in model.attribute_map.items()}
    errors = []
    for key, item in value.items():
        if key not in fields:
            errors.append(f"{path}.{key}: unknown field of {type_name}")
        else:
            errors += _walk(item, model.openapi_types[fields[key]], f"{path}.{key}")
    return errors


def schema_errors(doc: dict) -> list[str]:
    kind, api_version = doc.get("kind"), doc.get("apiVersion")
    if kind not in API_VERSIONS:
        return [f"kind: {kind!r} is not a kind this check knows"]
    if api_version != API_VERSIONS[kind]:
        return [f"apiVersion: {kind} is served as {API_VERSIONS[kind]}, not {api_version!r}"]
    type_name = api_version.rpartition("/")[2].capitalize() + kind
    errors = _walk(doc, type_name, kind)
    if not errors:
        try:
            ApiClient().deserialize(json.dumps(doc), type_name, "application/json")
        except Exception as exc:  # pydantic's ValidationError: missing required field or wrong type
            errors.append(f"{kind}: {exc}")
    if not (doc.get("metadata") or {}).get("name"):
        errors.append(f"{kind}.metadata.name: required")
    return errors


def pod_templates(doc: dict) -> list[dict]:
    spec = doc.get("spec") or {}
    if doc.get("kind") in ("Deployment", "StatefulSet", "DaemonSet", "Job"):
        return [spec.get("template") or {}]
    if doc.get("kind") == "CronJob":
        return [((spec.get("jobTemplate") or {}).get("spec") or {}).get("template") or {}]
    if doc.get("kind") == "Pod":
        return [doc]
    return []


DOCS = documents()


def test_there_are_manifests_with_pods():
    assert MANIFESTS and any(pod_templates(doc) for _, doc in DOCS)


@pytest.mark.parametrize("name,doc", DOCS, ids=[name for name, _ in DOCS])
def test_manifest_matches_the_kubernetes_schema(name, doc):
    assert schema_errors(doc) == []


@pytest.mark.parametrize("name,doc", [(n, d) for n, d in DOCS if pod_templates(d)],
                         ids=[n for n, d in DOCS if pod_templates(d)])
def test_pod_templates_meet_the_restricted_profile(name, doc):
    for template in pod_templates(doc):
        assert pod_violations(template, "restricted", prefix=name, require_set=True) == []


def _deployment() -> dict:
    return json.loads(json.dumps(next(doc for _, doc in DOCS if doc["kind"] == "Deployment")))


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].update(readinessprobe={}),
     "containers[0].readinessprobe: unknown field of V1Container"),
    (lambda d: d["spec"].update(replicas="2"), "spec.replicas: expected int"),
    (lambda d: d["spec"]["template"]["spec"]["containers"][0].pop("name"), "name"),
    (lambda d: d["spec"].pop("selector"), "selector"),
    (lambda d: d.update(apiVersion="extensions/v1beta1"), "apiVersion: Deployment is served as apps/v1"),
    (lambda d: d["metadata"].update(labelz={}), "metadata.labelz: unknown field of V1ObjectMeta"),
], ids=["unknown-field", "wrong-type", "missing-container-name", "missing-selector", "old-api", "typo-in-metadata"])
def test_the_schema_check_catches_mistakes(mutate, expected):
    doc = _deployment()
    assert schema_errors(doc) == []
    mutate(doc)
    errors = schema_errors(doc)
    assert any(expected in e for e in errors), errors


def test_the_restricted_check_catches_an_unhardened_container():
    doc = _deployment()
    container = doc["spec"]["template"]["spec"]["containers"][0]
    container["securityContext"] = {"allowPrivilegeEscalation": True}
    errors = pod_violations(doc["spec"]["template"], "restricted", require_set=True)
    assert any("allowPrivilegeEscalation" in e for e in errors)
    assert any("capabilities.drop" in e for e in errors)
