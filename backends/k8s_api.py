"""Kubernetes backend: the API plumbing KubernetesBackend is built on. Client construction from a
kubeconfig or the in-cluster service account, one `_call()` that sends every request with an
explicit timeout and reads the reply as JSON (`_preload_content=False`), HTTP errors mapped to
BackendError with RBAC hints, idempotent delete and upsert, and the site connection check.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import urllib3
from kubernetes import client
from kubernetes import config as kube_config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from backends import k8s_manifests as km
from backends.base import BackendError, CheckResult
from backends.k8s_config import KubernetesSiteConfig

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


class KubeApiMixin:
    """The API half of KubernetesBackend: it needs `config`, `_lock` and `_api_client` (None until
    the first call) on the instance."""

    config: KubernetesSiteConfig
    _lock: Any  # a threading.RLock
    _api_client: client.ApiClient | None

    # -- API plumbing -------------------------------------------------------------------------

    @property
    def namespace(self) -> str:
        return self.config.namespace

    def _core(self) -> client.CoreV1Api:
        return client.CoreV1Api(self._client())

    def _client(self) -> client.ApiClient:
        with self._lock:
            if self._api_client is None:
                cfg = client.Configuration()
                try:
                    if self.config.config_file_path:
                        kube_config.load_kube_config(
                            config_file=self.config.config_file_path, client_configuration=cfg, persist_config=False)
                    else:
                        kube_config.load_incluster_config(client_configuration=cfg)
                except (ConfigException, OSError) as exc:
                    where = self.config.config_file_path or "the in-cluster service account"
                    raise BackendError(f"cannot load Kubernetes credentials from {where}: {exc}") from exc
                cfg.retries = 0  # callers retry retryable errors with backoff; a blind re-POST could duplicate
                self._api_client = client.ApiClient(cfg)
            return self._api_client

    def _call(self, verb: str, resource: str, fn: Callable[..., Any], *args: Any, raw: bool = False,
              **kwargs: Any) -> Any:
        """Run one API call with a timeout; map failures to BackendError. Returns parsed JSON
        (or the decoded text when `raw`)."""
        kwargs.setdefault("_request_timeout", self.config.request_timeout)
        kwargs["_preload_content"] = False
        try:
            resp = fn(*args, **kwargs)
            data = resp.data
        except ApiException as exc:
            raise self._api_error(exc, verb, resource) from exc
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise BackendError(f"Kubernetes API unreachable ({verb} {resource}): {exc}", retryable=True) from exc
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

    def _api_error(self, exc: ApiException, verb: str, resource: str) -> KubeApiError:
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

    def _delete(self, resource: str, name: str, *, grace: int | None = None) -> bool:
        """Delete and report whether it existed; 404 is success."""
        core = self._core()
        fn = core.delete_namespaced_pod if resource == "pods" else core.delete_namespaced_secret
        kwargs = {} if grace is None else {"grace_period_seconds": grace}
        try:
            self._call("delete", resource, fn, name, self.namespace, **kwargs)
            return True
        except KubeApiError as exc:
            if exc.status == 404:
                return False
            raise

    def _delete_credentials(self, pod: str) -> None:
        try:
            self._delete("secrets", km.credential_secret_name(pod))
        except BackendError as exc:  # the ownerReference still collects it with the pod
            log.warning("could not delete credential Secret of %s: %s", pod, exc)

    def _read_pod(self, name: str) -> dict[str, Any] | None:
        try:
            return self._call("get", "pods", self._core().read_namespaced_pod, name, self.namespace)
        except KubeApiError as exc:
            if exc.status == 404:
                return None
            raise

    def _events_for(self, pod: str) -> list[dict[str, Any]] | None:
        try:
            data = self._call("list", "events", self._core().list_namespaced_event, self.namespace,
                              field_selector=f"involvedObject.name={pod}")
        except BackendError as exc:
            log.warning("cannot read events of pod %s: %s", pod, exc)
            return None
        return list(data.get("items") or [])

    def _upsert_secret(self, body: dict[str, Any]) -> None:
        core, name = self._core(), body["metadata"]["name"]
        try:
            self._call("create", "secrets", core.create_namespaced_secret, self.namespace, body)
            return
        except KubeApiError as exc:
            if exc.status != 409:
                raise
        try:
            self._call("update", "secrets", core.replace_namespaced_secret, name, self.namespace, body)
        except KubeApiError as exc:
            if exc.status != 404:
                raise
            self._call("create", "secrets", core.create_namespaced_secret, self.namespace, body)

    def _logs_tail(self, pod: dict[str, Any], *, tail: int = LOGS_TAIL, quiet: bool = True) -> str:
        name = pod["metadata"]["name"]
        kwargs: dict[str, Any] = {"tail_lines": tail}
        container = (pod["metadata"].get("annotations") or {}).get(km.MAIN_CONTAINER_ANNOTATION)
        if container:
            kwargs["container"] = container
        try:
            text = self._call("get", "pods/log", self._core().read_namespaced_pod_log, name, self.namespace,
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

    def check_connection(self) -> list[CheckResult]:
        """API reachable, namespace readable, and one SelfSubjectAccessReview per needed permission."""
        try:
            version = self._call("get", "version", client.VersionApi(self._client()).get_code)
        except BackendError as exc:
            return [CheckResult(name="api", ok=False, detail=str(exc))]
        host = self._client().configuration.host
        results = [CheckResult(name="api", ok=True, detail=f"Kubernetes {version.get('gitVersion', '?')} at {host}")]
        try:
            self._call("list", "pods", self._core().list_namespaced_pod, self.namespace, limit=1)
            results.append(CheckResult(name="namespace", ok=True, detail=f"namespace {self.namespace!r} readable"))
        except BackendError as exc:
            results.append(CheckResult(name="namespace", ok=False, detail=str(exc)))
        authz = client.AuthorizationV1Api(self._client())
        for verb, resource, sub in RBAC_NEEDS:
            label = f"{resource}/{sub}" if sub else resource
            attrs = {"namespace": self.namespace, "verb": verb, "resource": resource}
            if sub:
                attrs["subresource"] = sub
            body = {"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectAccessReview",
                    "spec": {"resourceAttributes": attrs}}
            try:
                review = self._call("create", "selfsubjectaccessreviews",
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
