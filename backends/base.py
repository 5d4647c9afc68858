"""The launch-backend interface and the plain data that crosses it.

No Django here: a backend is built from a typed site configuration, turns a JobRequest into a
LaunchSpec (pure validation), runs it, and reports what it sees as Observations. The `jobs` app
stores those observations; backends never touch the database.
"""

from __future__ import annotations

import abc
import enum
import os
import socket
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

MANAGED_BY = "flare-launcher"
# Label keys put on every container / pod / process the launcher starts, so that after a restart
# everything it manages can be found again without the database.
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_SITE = "flare-launcher/site"
LABEL_JOB_PK = "flare-launcher/job"
LABEL_JOB_ID = "flare-launcher/nvflare-job-id"
LABEL_STUDY = "flare-launcher/study"


class JobState(enum.StrEnum):
    QUEUED = "queued"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    ABORTED = "aborted"
    LAUNCH_FAILED = "launch_failed"
    LOST = "lost"

    @property
    def is_terminal(self) -> bool:
        return self in TERMINAL_STATES


TERMINAL_STATES = frozenset(
    {JobState.SUCCEEDED, JobState.FAILED, JobState.ABORTED, JobState.LAUNCH_FAILED, JobState.LOST}
)


class ReturnCode(enum.IntEnum):
    """NVFlare's JobReturnCode."""

    SUCCESS = 0
    EXECUTION_ERROR = 1
    ABORTED = 9
    EXCEPTION = 101
    UNSAFE_COMPONENT = 102
    CONFIG_ERROR = 103
    INFRASTRUCTURE_ERROR = 104
    UNKNOWN = 127


def state_for_return_code(code: int) -> JobState:
    """Terminal state that a finished job's NVFlare return code stands for."""
    if code == ReturnCode.SUCCESS:
        return JobState.SUCCEEDED
    if code == ReturnCode.ABORTED:
        return JobState.ABORTED
    return JobState.FAILED


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


class BackendError(Exception):
    """A backend operation failed. `retryable` says whether the same call may succeed later
    (daemon unreachable, 5xx) or never will (missing image, bad mount)."""

    def __init__(self, message: str, *, retryable: bool = False):
        super().__init__(message)
        self.retryable = retryable


class EngineUnreachable(BackendError):
    """The engine (Docker daemon, Kubernetes API) did not answer: always retryable. The message
    names the engine and its address and says why in a few words (connection_cause)."""

    def __init__(self, message: str):
        super().__init__(message, retryable=True)


def connection_cause(exc: BaseException) -> str:
    """Why a connection failed, in a few words ("connection refused", "timed out"), instead of the
    HTTP libraries' nested reprs (pool, object addresses, retry counts)."""
    seen: list[BaseException] = []
    todo: list[BaseException] = [exc]
    while todo and len(seen) < 20:
        current = todo.pop(0)
        if current in seen:
            continue
        seen.append(current)
        # urllib3 keeps the underlying error in .reason and in args; requests and docker chain it.
        todo += [e for e in (getattr(current, "reason", None), current.__cause__, current.__context__, *current.args)
                 if isinstance(e, BaseException)]
    for error in seen:
        if isinstance(error, socket.gaierror):
            return f"cannot resolve the host name ({error.strerror or error})".lower()
        if isinstance(error, TimeoutError) or "timeout" in type(error).__name__.lower():
            return "timed out"
        if isinstance(error, OSError) and error.errno:
            return (error.strerror or os.strerror(error.errno)).lower()
    for error in seen:
        if "ssl" in type(error).__name__.lower():
            return f"TLS handshake failed ({str(error).splitlines()[0][:160]})"
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text if len(text) <= 200 else text[:197] + "..."


class StillRunning(BackendError):
    """cleanup() was asked to remove a workload that has not ended: terminate it first."""


class InvalidJobSpec(BackendError):
    """The job request or site configuration cannot be launched. `field` is the dotted path of
    the offending input (e.g. ``job_meta.launcher_spec.site-1.docker.privileged``)."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}", retryable=False)
        self.field = field
        self.reason = message


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, kw_only=True)
class DatasetSpec:
    study: str
    name: str
    source: str  # host path (docker/process) or PVC claim name (kubernetes)
    mode: str  # "ro" | "rw"

    @property
    def mount_path(self) -> str:
        return f"/data/{self.study}/{self.name}"


@dataclass(frozen=True, kw_only=True)
class SecretEnvRef:
    """A study `secret_env` entry (§5.2): the job's env var `name` gets a secret's value.
    Docker: the value of the launcher's own environment variable `source` (`key` unused), read at
    launch and never stored; Kubernetes: `secretKeyRef {name: source, key: key}`."""

    name: str
    source: str
    key: str


@dataclass(frozen=True, kw_only=True)
class SecretMount:
    """A study `secret_mounts` entry (§5.2), always read-only at `mount_path`. Docker: `source` is a
    host path bound read-only (confined like dataset sources; `items` refused); Kubernetes: `source`
    is a Secret name mounted as a Secret volume, `items` its (key, path) projection (None: all keys)."""

    study: str
    name: str
    source: str
    mount_path: str
    items: tuple[tuple[str, str], ...] | None = None


@dataclass(frozen=True, kw_only=True)
class StudyRuntime:
    """What the site configured for one study (v1 datasets plus the v2 keys the backends use)."""

    name: str
    datasets: tuple[DatasetSpec, ...] = ()
    image: str | None = None
    env: Mapping[str, str] = field(default_factory=dict)
    docker_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pod_template: Mapping[str, Any] | None = None
    secret_env: tuple[SecretEnvRef, ...] = ()
    secret_mounts: tuple[SecretMount, ...] = ()


@dataclass(frozen=True, kw_only=True)
class JobRequest:
    """A launch request as the FL parent sends it: NVFlare job meta plus JOB_PROCESS_ARGS."""

    site: str  # NVFlare site name, e.g. "site-1"
    job_pk: str  # the dashboard's id of the job record
    job_id: str  # NVFlare job id
    role: str = "client"  # "client" | "server"
    job_meta: Mapping[str, Any] = field(default_factory=dict)
    job_args: Mapping[str, Any] = field(default_factory=dict)  # name -> (flag, value)
    set_options: tuple[str, ...] = ()  # the parent's `args.set` list, rendered after --set
    study: StudyRuntime | None = None  # resolved from the site's studies; None -> no mounts
    byoc: bool = False  # set by the site, never by the submitter
    # The launcher's own site probe only, never taken from a submitter (the API has no such field):
    # the whole argv, run as given instead of NVFlare's `<python> -u -m <module> <flags...>`, with
    # everything else as for that command: same image, user, env (credentials included), mounts,
    # working directory and labels, and the request validated the same way (job args, module
    # allowlist, set options). argv[0] is not implied: pass the python path there to run python
    # (the site's is `config.default_python_path` on every backend), or a program on the job's PATH
    # (a shell in the image). Docker: the container's command; Kubernetes: the job container's
    # command [argv[0]] and args argv[1:]; process: the job process (PATH: argv[0]'s directory,
    # then the fixed system PATH). LaunchSpec.command is then this argv (nvflare.job_command).
    command: tuple[str, ...] | None = None


@dataclass(frozen=True, kw_only=True)
class LaunchSpec:
    """A validated, fully resolved launch. `options` holds backend-specific resolved settings
    (Docker run kwargs, the Kubernetes manifest...). `credentials` never leave the job's env."""

    backend: str
    site: str
    job_pk: str
    job_id: str
    role: str
    name: str  # deterministic container / pod / process name
    image: str | None
    command: tuple[str, ...]
    env: Mapping[str, str]
    credentials: Mapping[str, str]
    labels: Mapping[str, str]
    study: str | None = None
    datasets: tuple[DatasetSpec, ...] = ()
    workdir: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)

    def redacted(self) -> dict[str, Any]:
        """The spec as stored on the job: credential values replaced, everything else kept."""
        data = asdict(self)
        data["credentials"] = {name: "***" for name in self.credentials}
        return _redact_values(data, set(self.credentials.values()))


def _redact_values(value: Any, secrets: set[str]) -> Any:
    # Belt and braces: a credential value that slipped into any other field is masked too.
    if isinstance(value, str):
        return "***" if value in secrets and value else value
    if isinstance(value, Mapping):
        return {k: _redact_values(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_redact_values(v, secrets) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Handle:
    """Opaque reference to a running workload, stored as JSON on the job."""

    backend: str
    ref: str  # container name, pod name, process name

    def as_dict(self) -> dict[str, str]:
        return {"backend": self.backend, "ref": self.ref}


@dataclass(frozen=True, kw_only=True)
class Observation:
    """What a backend saw about one workload at one moment.

    kind "state": the workload is in `state` (which may equal the job's current state).
    kind "event": a note worth showing on the job's timeline (image pull, pending reason) that
    does not by itself change the state.
    """

    ref: str  # the workload's name, as its Handle.ref: recording an observation adopts it as the job's handle
    state: JobState
    job_pk: str | None = None  # from the workload's labels
    kind: str = "state"
    exit_code: int | None = None  # raw exit code from the engine
    return_code: int | None = None  # NVFlare JobReturnCode, for terminal states
    reason: str = ""  # short machine-ish reason: "OOMKilled", "ErrImagePull", "vanished"
    message: str = ""  # what an admin reads
    at: float | None = None  # engine timestamp, epoch seconds
    event_id: str | None = None  # for de-duplicating replayed events
    logs_tail: str | None = None  # saved before the workload is removed


@dataclass(frozen=True, kw_only=True)
class CheckResult:
    name: str
    ok: bool
    detail: str = ""


# ---------------------------------------------------------------------------------------------
# The interface
# ---------------------------------------------------------------------------------------------


class Backend(abc.ABC):
    """One site's runtime. Built from that site's typed configuration; this is everything the
    `jobs` app calls.

    Every method is idempotent and bounded in time; failures raise BackendError(retryable=...).
    A backend holds its engine clients and nothing the job row or the engine already knows: a new
    object for the same site (a restarted dashboard) sees and does exactly what the old one did.
    """

    kind: ClassVar[str]

    @abc.abstractmethod
    def prepare(self, request: JobRequest) -> LaunchSpec:
        """Validate the request against NVFlare's rules for this backend and resolve it into a
        LaunchSpec. Pure: no engine calls. Raises InvalidJobSpec naming the offending field."""

    @abc.abstractmethod
    def launch(self, spec: LaunchSpec) -> Handle:
        """Create and start the workload. If it already exists (same deterministic name), adopt
        it and return its handle: never start a second one. Leaves nothing half-created on error."""

    @abc.abstractmethod
    def inspect(self, handle: Handle, *, terminate_requested: bool = False) -> Observation:
        """Current state, as the engine reports it. A workload that no longer exists is reported
        with state LOST and reason "vanished". `terminate_requested` is what the job row knows
        (Job.terminate_requested_at): then the answer is read as terminated_outcome() says."""

    @abc.abstractmethod
    def list_managed(self) -> list[Observation]:
        """Every workload this site manages, found by label, as the engine reports it."""

    @abc.abstractmethod
    def terminate(self, handle: Handle) -> Observation:
        """Stop the workload at once and report the outcome: ABORTED (9), or what
        terminated_outcome() keeps for a workload that had already ended. Idempotent: calling it
        again, or for a workload that never existed or is gone, answers ABORTED (9) too."""

    @abc.abstractmethod
    def logs(self, handle: Handle, *, tail: int = 200) -> str:
        """The last `tail` lines of the workload's output ("" when unavailable)."""

    @abc.abstractmethod
    def cleanup(self, handle: Handle) -> None:
        """Remove what the engine keeps of a workload that has ended (container, pod and its
        Secret, process record and log), once the job's record is complete. Raises StillRunning
        (not retryable) for one that has not ended: cleanup never stops a job, terminate does.
        A workload that is already gone is fine."""

    @abc.abstractmethod
    def stream(self, stop: threading.Event, *, since: int | None = None) -> Iterator[Observation]:
        """Yield observations as the engine reports changes, until `stop` is set. `since` (epoch
        seconds) asks for the changes from then on as well; each backend says how it honours it
        (replayed engine events, or a first snapshot of every workload, which covers them). A
        replay may repeat an observation: recording one is idempotent. Raises
        BackendError(retryable=True) when the connection drops; callers reconnect and reconcile."""

    @abc.abstractmethod
    def check_connection(self, datasets: Iterable[DatasetSpec] = ()) -> list[CheckResult]:
        """Site "test connection": each check with a detail an admin understands, including the
        given datasets' sources where this backend can see them."""


# NVFlare keeps these codes of a job that failed on its own, even after a terminate (§4.9).
KEPT_AFTER_TERMINATE = frozenset({ReturnCode.EXCEPTION, ReturnCode.UNSAFE_COMPONENT, ReturnCode.CONFIG_ERROR})


def terminated_outcome(observation: Observation) -> Observation:
    """How an observation reads for a workload the launcher was asked to terminate: a failed exit
    (the kill's 137 included) or a vanished workload counts as aborted (9), as NVFlare answers after
    terminate(); a success, a kept 101-103 and a workload that has not ended are left as they are.
    The jobs app applies the same rule when it records an exit (jobs.services.lifecycle)."""
    failed = observation.state is JobState.FAILED and observation.return_code not in KEPT_AFTER_TERMINATE
    if observation.kind != "state" or not (failed or observation.state is JobState.LOST):
        return observation
    return replace(observation, state=JobState.ABORTED, return_code=int(ReturnCode.ABORTED),
                   reason=observation.reason or "terminated")


def labels_for(*, site: str, job_pk: str, job_id: str, study: str | None) -> dict[str, str]:
    """The label set every managed workload carries (values are sanitised by each backend)."""
    return {
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_SITE: site,
        LABEL_JOB_PK: str(job_pk),
        LABEL_JOB_ID: job_id,
        LABEL_STUDY: study or "",
    }
