"""The Docker backend: one container per NVFlare job on the site's Docker host (launch-semantics.md §3).

`prepare()` turns a JobRequest into a LaunchSpec (validation and host path checks only: prepare.py,
with the pure parts in specs.py and config.py and the filesystem checks in mounts.py and binds.py).
Everything else sends what it is given to the daemon through the site's engine client (client.py)
and maps the replies (observe.py); stream() is the event feed (watch.py), given the same client.
Containers are created and started (never `containers.run()`,
never auto-removed, so the exit code and logs can be read), labelled for `list_managed()`, and
removed by `cleanup()`.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterable, Iterator
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound

from backends.base import (
    LABEL_JOB_PK,
    LABEL_MANAGED_BY,
    LABEL_SITE,
    MANAGED_BY,
    Backend,
    BackendError,
    CheckResult,
    DatasetSpec,
    Handle,
    InvalidJobSpec,
    JobRequest,
    JobState,
    LaunchSpec,
    Observation,
    ReturnCode,
    StillRunning,
    terminated_outcome,
)
from backends.docker.binds import Pin, Root, verify
from backends.docker.client import DockerApi
from backends.docker.config import DockerSiteConfig
from backends.docker.mounts import (
    bind_pins,
    confined_source,
    ensure_job_dir,
    workspace_dir,
)
from backends.docker.observe import observation_from_container, observation_from_summary
from backends.docker.prepare import launch_spec_for
from backends.docker.specs import create_kwargs
from backends.docker.watch import EventFeed
from backends.logtail import cap_tail, tail_max_bytes

__all__ = ["DockerBackend"]

LOGS_TAIL = 200  # lines kept on terminal observations, read before cleanup() removes the container
LOGS_PROBE_LINES = 1_000  # read first; more only when these are short (a Docker log entry is <= 16 KiB)
LOGS_MAX_LINES = 10_000


class DockerBackend(Backend):
    """One site's Docker host. Safe to share between threads; the daemon holds all durable state."""

    kind = "docker"

    def __init__(self, *, site: str, config: DockerSiteConfig, allowed_data_roots: tuple[str, ...] = ()):
        self.site = site
        self.config = config
        # Staff-configured roots are trusted: resolved once here. Nothing below them follows a symlink.
        self.data_roots = tuple(Root.of(root) for root in allowed_data_roots if root)
        self.allowed_data_roots = tuple(root.real for root in self.data_roots)
        self.shared_root = Root.of(config.shared_file_root) if config.shared_file_root else None
        self.api = DockerApi(config)  # the engine client: the only thing this object holds
        self.events = EventFeed(self.api, site)  # stream()'s position: a cursor, not job state

    # -----------------------------------------------------------------------------------------
    # prepare (pure apart from filesystem checks)
    # -----------------------------------------------------------------------------------------

    def prepare(self, request: JobRequest) -> LaunchSpec:
        """See backends/docker/prepare.py; raises InvalidJobSpec naming the offending field."""
        return launch_spec_for(request, backend_site=self.site, config=self.config,
                               data_roots=self.data_roots, shared_root=self.shared_root)

    # -----------------------------------------------------------------------------------------
    # lifecycle
    # -----------------------------------------------------------------------------------------

    def launch(self, spec: LaunchSpec) -> Handle:
        """Create and start the container. A name conflict adopts the existing container when its
        labels say it is this job's (starting it if it was only created); a container half-created
        by this call is removed before the error propagates. Never pulls unless allow_pull."""
        client = self.api.client()
        with self.api.errors(f"launch job {spec.job_id}"):
            self.api.ensure_network(client)
            workspace = workspace_dir(self.config.workspace)
            ensure_job_dir(spec, workspace)
            roots = [Root(configured=workspace, real=workspace), *self.data_roots]
            pins = bind_pins(spec, workspace, roots + ([self.shared_root] if self.shared_root else []))
            try:
                container = self._create(client, spec)
            except APIError as exc:
                if exc.status_code != 409:
                    raise
                return self._adopt(client, spec, pins)
            self._start_checked(container, pins)
        return Handle(backend=self.kind, ref=spec.name)

    @staticmethod
    def _start_checked(container: Any, pins: list[Pin]) -> None:
        """Start `container` only if every bind source is still what launch() pinned, else remove it
        and fail permanently. Docker mounts by path: the window left inside start() (runc's mount)
        is described in backends/docker/binds.py; the verify after start catches a lasting swap."""
        try:
            verify(pins, "before the container started")
            container.start()
            verify(pins, "while the container started")
        except BaseException:
            with contextlib.suppress(Exception):
                container.remove(force=True)
            raise

    def _create(self, client: docker.DockerClient, spec: LaunchSpec) -> Any:
        kwargs = create_kwargs(spec)
        try:
            return client.containers.create(**kwargs)
        except ImageNotFound:
            if not self.config.allow_pull:
                raise BackendError(
                    f"image {spec.image!r} not found for job {spec.job_id} on this Docker host; "
                    "no pull happens (load the image on the host, or let the site allow pulls)"
                ) from None
        try:
            client.images.pull(spec.image)
        except (ImageNotFound, NotFound):
            raise BackendError(f"image {spec.image!r} not found for job {spec.job_id}: the pull failed") from None
        return client.containers.create(**kwargs)

    def _adopt(self, client: docker.DockerClient, spec: LaunchSpec, pins: list[Pin]) -> Handle:
        container = client.containers.get(spec.name)
        labels = container.labels or {}
        if labels.get(LABEL_JOB_PK) != spec.job_pk or labels.get(LABEL_SITE) != self.site:
            raise BackendError(
                f"a container named {spec.name} already exists but belongs to another job "
                f"({labels.get(LABEL_SITE)!r}/{labels.get(LABEL_JOB_PK)!r}); remove it by hand"
            )
        if container.status == "created":
            self._start_checked(container, pins)
        return Handle(backend=self.kind, ref=spec.name)

    def inspect(self, handle: Handle, *, terminate_requested: bool = False) -> Observation:
        with self.api.errors(f"inspect {handle.ref}"):
            client = self.api.client()
            try:
                observation = self._observe(client.containers.get(handle.ref))
            except NotFound:
                observation = Observation(ref=handle.ref, state=JobState.LOST, reason="vanished",
                                          message="the container no longer exists")
        return terminated_outcome(observation) if terminate_requested else observation

    def _observe(self, container: Any) -> Observation:
        terminal = container.status in ("exited", "dead")
        tail = self._read_logs(container, LOGS_TAIL) if terminal else None
        return observation_from_container(container.attrs, logs_tail=tail)

    def list_managed(self) -> list[Observation]:
        """One list call; an inspect (and a logs read) only for containers that have ended, which
        the watcher removes soon after. So a reconcile of N running jobs costs one call, not N + 1
        (the SDK's containers.list inspects every container it lists)."""
        filters = {"label": [f"{LABEL_MANAGED_BY}={MANAGED_BY}", f"{LABEL_SITE}={self.site}"]}
        with self.api.errors("list containers"):
            client = self.api.client()
            observations = []
            for summary in client.api.containers(all=True, filters=filters):
                observation = observation_from_summary(summary)
                if observation is None:
                    try:
                        observation = self._observe(client.containers.get(summary["Id"]))
                    except NotFound:  # removed between the list and the inspect
                        continue
                observations.append(observation)
            return observations

    def terminate(self, handle: Handle) -> Observation:
        """Stop at once (SIGKILL, no grace); the outcome as terminated_outcome() reads it: the kill's exit
        is aborted (9), a success keeps its 0. Idempotent: a missing container is aborted (9)."""
        vanished = Observation(ref=handle.ref, state=JobState.ABORTED, return_code=int(ReturnCode.ABORTED),
                               reason="vanished", message="the container no longer exists")
        with self.api.errors(f"terminate {handle.ref}"):
            try:
                container = self.api.client().containers.get(handle.ref)
            except NotFound:
                return vanished
            if container.status not in ("exited", "dead"):
                try:
                    container.stop(timeout=0)
                except NotFound:
                    return vanished
                except APIError:
                    container.kill()
                with contextlib.suppress(NotFound):
                    container.reload()
                if container.status not in ("exited", "dead"):
                    # stop() is a no-op on a container that never started: remove it instead, so
                    # terminate always leaves a terminal state.
                    with contextlib.suppress(NotFound):
                        container.remove(force=True)
                    return Observation(ref=handle.ref, state=JobState.ABORTED, return_code=int(ReturnCode.ABORTED),
                                       job_pk=(container.labels or {}).get(LABEL_JOB_PK), reason="terminated",
                                       message=f"removed while {container.status}")
            return terminated_outcome(self._observe(container))

    def logs(self, handle: Handle, *, tail: int = 200) -> str:
        with self.api.errors(f"read logs of {handle.ref}"):
            try:
                return self._read_logs(self.api.client().containers.get(handle.ref), tail)
            except NotFound:
                return ""

    def usage(self, handle: Handle) -> dict[str, Any] | None:
        """Cumulative CPU seconds and memory of a running container (backends/docker/stats.py)."""
        from backends.docker.stats import container_usage

        return container_usage(self.api, handle.ref)

    @staticmethod
    def _read_logs(container: Any, tail: int) -> str:
        """The last `tail` lines (at most LOGS_MAX_LINES), byte-capped (backends.logtail). Not
        streamed: the SDK's log stream drops the socket timeout and hides a cut-off response."""
        if tail <= 0:
            return ""
        try:
            # First the newest LOGS_PROBE_LINES: when they already fill the byte cap (long lines),
            # older ones would be cut anyway and are never fetched.
            first = min(tail, LOGS_PROBE_LINES)
            data = container.logs(stdout=True, stderr=True, tail=first)
            if tail > first and len(data) < tail_max_bytes() and data.count(b"\n") >= first:
                data = container.logs(stdout=True, stderr=True, tail=min(tail, LOGS_MAX_LINES))
        except NotFound:
            return ""
        return cap_tail(data, lines=tail)

    def cleanup(self, handle: Handle) -> None:
        """Remove an ended container; StillRunning for one that was created but has not ended."""
        with self.api.errors(f"remove {handle.ref}"):
            try:
                status = self.api.client().api.inspect_container(handle.ref)["State"]["Status"]
                if status not in ("exited", "dead", "removing"):
                    raise StillRunning(f"container {handle.ref} is {status}; terminate it before cleanup")
                self.api.client().api.remove_container(handle.ref, force=True)
            except NotFound:
                pass
            except APIError as exc:
                if exc.status_code != 409:  # 409: removal already in progress
                    raise

    # -----------------------------------------------------------------------------------------
    # events
    # -----------------------------------------------------------------------------------------

    def stream(self, stop: threading.Event, *, since: int | None = None) -> Iterator[Observation]:
        """Container events of this site, from `since` (epoch seconds) or where this object's last
        stream stopped (on a new object: from now): see backends/docker/watch.py."""
        yield from self.events.stream(stop, since=since)

    # -----------------------------------------------------------------------------------------
    # site check
    # -----------------------------------------------------------------------------------------

    def check_connection(self, datasets: Iterable[DatasetSpec] = ()) -> list[CheckResult]:
        results: list[CheckResult] = []
        try:
            client = self.api.client()
            with self.api.errors("reach Docker"):
                version = client.version()
            results.append(CheckResult(name="docker daemon", ok=True,
                                       detail=f"Docker {version.get('Version')}, API {version.get('ApiVersion')}"))
        except BackendError as exc:
            results.append(CheckResult(name="docker daemon", ok=False, detail=str(exc)))
            client = None
        if client is None:
            results.append(CheckResult(name="network", ok=False, detail="not checked: the daemon is unreachable"))
        else:
            try:
                with self.api.errors("look up the network"):
                    self.api.ensure_network(client, fresh=True)  # the backend is cached: never a remembered answer
                results.append(CheckResult(name="network", ok=True, detail=f"{self.config.network} exists"))
            except BackendError as exc:
                results.append(CheckResult(name="network", ok=False, detail=str(exc)))
        workspace_ok = False
        try:
            workspace = workspace_dir(self.config.workspace)
            workspace_ok = True
            writable = os.access(workspace, os.W_OK)
            results.append(CheckResult(name="workspace", ok=writable,
                                       detail=f"{workspace} " + ("is writable" if writable else "is not writable")))
        except InvalidJobSpec as exc:
            results.append(CheckResult(name="workspace", ok=False, detail=exc.reason))
        for dataset in datasets:
            name = f"dataset {dataset.study}/{dataset.name}"
            try:
                source = confined_source(dataset.source, name, data_roots=self.data_roots,
                                         workspace=workspace if workspace_ok else "",
                                         docker_host=self.config.docker_host)
                results.append(CheckResult(name=name, ok=True, detail=f"{source} present"))
            except InvalidJobSpec as exc:
                results.append(CheckResult(name=name, ok=False, detail=exc.reason))
        return results
