"""Kubernetes backend: the API plumbing KubernetesBackend is built on. Client construction from a
kubeconfig or the in-cluster service account, one `call()` that sends every request with an
explicit timeout and reads the reply as JSON (`_preload_content=False`), HTTP errors mapped to
BackendError with RBAC hints, idempotent delete and upsert, and the site connection check.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

import urllib3
import yaml
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from backends.base import (
    BackendError,
    CheckResult,
    DatasetSpec,
    EngineUnreachable,
    connection_cause,
)
from backends.kubernetes import manifests as km
from backends.kubernetes.config import KubernetesSiteConfig

log = logging.getLogger("backends.kubernetes")  # the name log lines had before the split

LOGS_TAIL = 200
# Every verb/resource the backend uses; docs/kubernetes-rbac.yaml grants exactly these.
RBAC_NEEDS = (
    ("create", "pods", ""), ("get", "pods", ""), ("list", "pods", ""), ("watch", "pods", ""),
    ("delete", "pods", ""), ("get", "pods", "log"),
    ("create", "secrets", ""), ("update", "secrets", ""), ("delete", "secrets", ""), ("patch", "secrets", ""),
    ("list", "events", ""), ("watch", "events", ""),
)


class KubeApiError(BackendError):
    """An API call answered with an HTTP error; `status` lets callers treat 404/409 as outcomes."""

    def __init__(self, message: str, *, status: int, retryable: bool = False):
        super().__init__(message, retryable=retryable)
        self.status = status


class KubeApi:
    """The Kubernetes API as one site's backend uses it: built from the site's configuration, it
    holds the API client (made at the first call) and nothing else. Safe to share between threads."""

    def __init__(self, config: KubernetesSiteConfig):
        self.config = config
        self._lock = threading.RLock()
        self._api_client: client.ApiClient | None = None

    # -- API plumbing -------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self.client())

    def client(self) -> client.ApiClient:
        with self._lock:
            if self._api_client is None:
                cfg = client.Configuration()
                try:
                    if self.config.config_file_path:
                        kube_config.load_kube_config(
                            config_file=self.config.config_file_path, client_configuration=cfg, persist_config=False)
                    else:
                        kube_config.load_incluster_config(client_configuration=cfg)
                # A kubeconfig edited into another shape after the site was saved fails inside the
                # client's loader with these too: a clear error, never a 500.
                except (ConfigException, OSError, TypeError, AttributeError, ValueError, yaml.YAMLError) as exc:
                    where = self.config.config_file_path or "the in-cluster service account"
                    raise BackendError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc
                cfg.retries = 0  # callers retry retryable errors with backoff; a blind re-POST could duplicate
                self._api_client = client.ApiClient(cfg)
            return self._api_client

    def call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, raw: bool = False,
              **kwargs: Any) -> Any:
        """Run one API call with a timeout; map failures to BackendError. Returns parsed JSON
        (or the decoded text when `raw`)."""
        kwargs.setdefault("_request_timeout", self.config.request_timeout)
        kwargs["_preload_content"] = False
        try:
            resp = fn(*args, **kwargs)
            data = resp.data
        except ApiException as exc:
            raise self.api_error(exc, verb, resource) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            where = self.client().configuration.host or "the in-cluster API"
            raise EngineUnreachable(f"cannot {verb} {resource}: Kubernetes API at {where} is unreachable "
                                    f"({connection_cause(exc)})") from exc
        except ValueError as exc:  # the client's model validation (pydantic) refused the body
            raise BackendError(f"invalid {resource} object for the Kubernetes API: {exc}") from exc
        if raw:
            return (data or b"").decode("utf-8", "replace")
        if not data:
            return {}
        try:
            return json.loads(data)
        except ValueError:
            return data.decode("utf-8", "replace")

    def api_error(self, exc: ApiException, verb: str, resource: str) -> KubeApiError:
        status = exc.status or 0
        detail = _status_message(exc)
        if status == 401:
            msg = ("Kubernetes API rejected the launcher's credentials (401 Unauthorized): "
                   f"check the token or certificate in {self.config.config_file_path or 'the service account'}")
        elif status == 403:
            msg = (f"Kubernetes RBAC: the launcher may not {verb} {resource} in namespace {self.namespace!r}; "
                   f"grant verb {verb!r} on {resource!r} in its Role (see docs/kubernetes-rbac.yaml). {detail}")
        else:
            msg = f"Kubernetes API error {status} on {verb} {resource}: {detail}"
        return KubeApiError(msg, status=status, retryable=status == 429 or status >= 500 or status == 0)

    def delete(self, resource: str, name: str, *, grace: int | None = None) -> bool:
        """Delete and report whether it existed; 404 is success."""
        core = self.core()
        fn = core.delete_namespaced_pod if resource == "pods" else core.delete_namespaced_secret
        kwargs = {} if grace is None else {"grace_period_seconds": grace}
        try:
            self.call("delete", resource, fn, name, self.namespace, **kwargs)
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise

    def delete_credentials(self, pod: str) -> None:
        try:
            self.delete("secrets", km.credential_secret_name(pod))
        except BackendError as exc:  # the ownerReference still collects it with the pod
            log.warning("could not delete credential Secret of %s: %s", pod, exc)

    def read_pod(self, name: str) -> dict[str, Any] | None:
        try:
            return self.call("get", "pods", self.core().read_namespaced_pod, name, self.namespace)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def events_for(self, pod: str) -> list[dict[str, Any]] | None:
        try:
            data = self.call("list", "events", self.core().list_namespaced_event, self.namespace,
                              field_selector=f"involvedObject.name={pod}")
        except BackendError as exc:
            log.warning("cannot read events of pod %s: %s", pod, exc)
            return None
        return list(data.get("items") or [])

    def upsert_secret(self, body: dict[str, Any]) -> None:
        core, name = self.core(), body["metadata"]["name"]
        try:
            self.call("create", "secrets", core.create_namespaced_secret, self.namespace, body)
            return
        except KubeApiError as exc:
            if exc.status != 409:
                raise
        try:
            self.call("update", "secrets", core.replace_namespaced_secret, name, self.namespace, body)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            self.call("create", "secrets", core.create_namespaced_secret, self.namespace, body)

    def logs_tail(self, pod: dict[str, Any], *, tail: int = LOGS_TAIL, quiet: bool = True) -> str:
        name = pod["metadata"]["name"]
        kwargs: dict[str, Any] = {"tail_lines": tail}
        container = (pod["metadata"].get("annotations") or {}).get(km.MAIN_CONTAINER_ANNOTATION)
        if container:
            kwargs["container"] = container
        try:
            text = self.call("get", "pods/log", self.core().read_namespaced_pod_log, name, self.namespace,
                              raw=True, **kwargs)
        except KubeApiError as exc:
            if quiet or exc.status in (400, 404):  # 400: container not started yet
                return ""
            raise
        except BackendError:
            if quiet:
                return ""
            raise
        return text

    # -- check --------------------------------------------------------------------------------

    def check_connection(self, datasets: Iterable[DatasetSpec] = ()) -> list[CheckResult]:
        """API reachable, namespace readable, and one SelfSubjectAccessReview per needed permission.
        `datasets` are not checked here: their sources are PVC claims, which the launcher has no
        permission to read; the kubelet reports a missing claim when the pod mounts it."""
        try:
            version = self.call("get", "version", client.VersionApi(self.client()).get_code)
        except BackendError as exc:
            return [CheckResult(name="api", ok=False, detail=str(exc))]
        host = self.client().configuration.host
        results = [CheckResult(name="api", ok=True, detail=f"Kubernetes {version.get('gitVersion', '?')} at {host}")]
        try:
            self.call("list", "pods", self.core().list_namespaced_pod, self.namespace, limit=1)
            results.append(CheckResult(name="namespace", ok=True, detail=f"namespace {self.namespace!r} readable"))
        except BackendError as exc:
            results.append(CheckResult(name="namespace", ok=False, detail=str(exc)))
        authz = client.AuthorizationV1Api(self.client())
        for verb, resource, sub in RBAC_NEEDS:
            label = f"{resource}/{sub}" if sub else resource
            attrs = {"namespace": self.namespace, "verb": verb, "resource": resource}
            if sub:
                attrs["subresource"] = sub
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attrs}}
            try:
                review = self.call("create", "selfsubjectaccessreviews",
                                    authz.create_self_subject_access_review, body)
                allowed = bool((review.get("status") or {}).get("allowed"))
                detail = "allowed" if allowed else (
                    f"missing permission: {verb} {label} in namespace {self.namespace!r} "
                    "(see docs/kubernetes-rbac.yaml)")
            except BackendError as exc:
                allowed, detail = False, f"cannot check {verb} {label}: {exc}"
            results.append(CheckResult(name=f"rbac {verb} {label}", ok=allowed, detail=detail))
        return results


def _status_message(exc: ApiException) -> str:
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", "replace")
    try:
        return json.loads(body).get("message") or str(exc.reason)
    except (TypeError, ValueError, AttributeError):
        return str(body or exc.reason or "")
