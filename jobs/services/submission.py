"""job_submit: validate a launch request, record the job and its request once, and launch it after
commit.

The checks that read the site's host (its workspace, the dataset and secret sources: the backend's
prepare) run where that host is: jobs.tasks.submit_check_task through engine_calls.engine_call, so
on a worker with LAUNCHER_ENGINE_VIA_WORKER (the web then needs no view of the workspaces and their
startup kits). The launch checks them all again (launch_failed naming the path); this check is for
a clear 400 before anything is recorded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db import IntegrityError, transaction
from django.utils import timezone

from backends import nvflare
from backends.base import (
    BackendError,
    DatasetSpec,
    InvalidJobSpec,
    JobRequest,
    JobState,
    SecretEnvRef,
    SecretMount,
    StudyRuntime,
)
from jobs.models import Job, Site
from jobs.services.engine_calls import backend_of, engine_call, site_of, site_ref
from jobs.services.lifecycle import job_create, job_note
from jobs.services.requests import CREDENTIAL_ARGS, request_to_store
from jobs.services.sealing import SealBroken, credentials_seal, credentials_unseal
from jobs.services.sites import study_runtime, study_sources_check

REDACTED = "***"


def split_credentials(job_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(job_args safe to store, the credential args). Credentials reach the job only through the
    launch task's message and the job's environment; the database never sees them."""
    stored, credentials = {}, {}
    for name, pair in job_args.items():
        if name in CREDENTIAL_ARGS:
            credentials[name] = pair
            stored[name] = [pair[0], REDACTED] if isinstance(pair, (list, tuple)) and pair else REDACTED
        else:
            stored[name] = pair
    return stored, credentials


def job_submit(
    *,
    site: Site,
    job_id: str,
    role: str = "client",
    job_meta: dict[str, Any],
    job_args: dict[str, Any],
    set_options: list[str] | None = None,
    submitted_by=None,
    submitted_by_token=None,
    source: str = "api",
    on_created: Callable[[Job], None] | None = None,
    command: tuple[str, ...] | None = None,
    message: str = "",
) -> tuple[Job, bool]:
    """Return (job, created). The same (site, job_id) again returns the existing job and launches
    nothing, also under concurrent submits (the unique constraint decides the winner).
    `on_created(job)` runs in the transaction that records a new job (the API's audit entry), so
    that a submit is one transaction, not a savepoint within the caller's. `command`: the
    launcher's own declared command override (JobRequest.command, the site probe), never a
    submitter's. `message`: the first timeline entry, instead of who submitted it.

    Raises InvalidJobSpec naming the field, or a BackendError when the host checks could not run
    (WorkerNoAnswer: no worker answered in time); then nothing is stored and nothing launched.
    """
    # The insert comes first and the unique constraint on (site, job_id) decides: a new job (the
    # usual case) costs no lookup, a resubmit costs a failed insert.
    try:
        prepared = _prepare(site=site, job_id=job_id, role=role, job_meta=job_meta, job_args=job_args,
                            set_options=set_options, submitted_by_token=submitted_by_token, command=command)
    except BackendError:  # InvalidJobSpec, or no worker answered: a re-submit still gets its job
        existing = _resubmitted(site, job_id, job_args)  # recorded before the site's settings changed
        if existing is None:
            raise
        return existing, False
    meta, study, options, request, spec = prepared
    stored_args, credentials = split_credentials(dict(job_args or {}))
    notes = []
    if study and request.study is None:
        notes.append(f"study {study!r} is not configured on site {site.name}: no datasets will be mounted")
    try:
        with transaction.atomic():
            job = job_create(
                site=site, job_id=job_id, source=source, notes=notes,
                message=message or _submitted_message(submitted_by, submitted_by_token),
                role=role, study=study, image=spec["image"], backend=site.backend, workload=spec["workload"],
                job_meta=meta, job_args=stored_args, set_options=list(options), request=request_to_store(request),
                submitted_by=submitted_by, submitted_by_token=submitted_by_token,
            )
            if on_created is not None:
                on_created(job)
            _enqueue_launch(job.pk, credentials)
    except IntegrityError:
        existing = _resubmitted(site, job_id, job_args)
        if existing is None:
            _refuse_workload_collision(site, job_id, spec["workload"])
            raise
        return existing, False
    return job, True


def _refuse_workload_collision(site: Site, job_id: str, workload: str) -> None:
    """Another job id that maps to the same container/pod/process name (e.g. `COLL-1` after
    `coll-1`) would adopt that job's workload: refused before anything reaches the engine."""
    other = Job.objects.filter(site=site, workload=workload).exclude(job_id=job_id).first()
    if other is not None:
        raise InvalidJobSpec("job_id", f"maps to the workload name {workload!r} of job {other.job_id!r} on this "
                                       "site (names are case-folded); use a job id that differs in more than case")


def _prepare(*, site, job_id, role, job_meta, job_args, set_options, submitted_by_token, command=None):
    """Check a submit and build its launch request (stored on the job); its host checks are
    submit_check's (validation only: the launch task prepares the stored request again with fresh
    study data). Returns (meta, study, set options, the request, submit_check's answer)."""
    nvflare.check_job_id(job_id)
    if role not in nvflare.ROLES:
        raise InvalidJobSpec("role", f"must be one of {', '.join(nvflare.ROLES)}")
    meta = dict(job_meta or {})
    # BYOC is the site's decision (§1.4): trusted only from the site's own FL parent (a site token),
    # which sends the meta it deployed; from anyone else it is dropped.
    if submitted_by_token is not None and submitted_by_token.site_id == site.pk:
        meta["byoc"] = bool(meta.get("byoc"))
    else:
        meta.pop("byoc", None)
    study = meta.get("study") or ""
    if not isinstance(study, str):
        raise InvalidJobSpec("job_meta.study", "must be a string")
    if study:
        nvflare.check_name(study, "job_meta.study")
    if "job_id" in meta and meta["job_id"] != job_id:
        raise InvalidJobSpec("job_meta.job_id", "must equal job_id")
    options = nvflare.check_set_options(set_options)
    if site.backend != "kubernetes":  # only a pod fetches its workspace over CellNet (§4.4)
        for name in nvflare.WORKSPACE_TRANSFER_ENV:
            if name in (job_args or {}):
                raise InvalidJobSpec(f"job_args.{name}", f"only for Kubernetes sites; site {site.name!r} uses "
                                                         f"{site.backend}: load FlareLauncherJobLauncher there")

    request = JobRequest(
        site=site.name, job_pk="0", job_id=job_id, role=role, job_meta=meta, job_args=job_args or {},
        set_options=options, study=study_runtime(site, study, check_sources=False), byoc=bool(meta.get("byoc")),
        command=command,
    )
    from jobs.tasks import submit_check_task  # tasks import the services

    checked = engine_call(submit_check_task, site=site_ref(site), request=request_message(request),
                          sealed_credentials=credentials_seal(split_credentials(dict(job_args or {}))[1]))
    return meta, study, options, request, checked


def submit_check(*, site: dict[str, Any], request: dict[str, Any], sealed_credentials: str) -> dict[str, str]:
    """Where the site's host is (jobs.tasks.submit_check_task, or here): the study's dataset
    sources, then the backend's prepare (workspace, job directory, binds, secret sources...). Plain
    data in and out; returns what the job row keeps of the spec. Raises InvalidJobSpec naming the field."""
    try:
        credentials = credentials_unseal(sealed_credentials)
    except SealBroken as exc:  # another SECRET_KEY on the worker: said, not a task failure
        raise BackendError(str(exc)) from None
    job_request = request_from_message(request, site=site["name"], credentials=credentials)
    study_sources_check(site_of(site), job_request.study)
    spec = backend_of(site).prepare(job_request)
    return {"image": spec.image or "", "workload": spec.name}


def request_message(request: JobRequest) -> dict[str, Any]:
    """A request as plain data for submit_check: the stored form (no credentials) and the study's runtime."""
    return {**request_to_store(request),
            "study_runtime": dataclasses.asdict(request.study) if request.study else None}


def request_from_message(data: dict[str, Any], *, site: str, credentials: dict[str, Any]) -> JobRequest:
    study = data["study_runtime"]
    if study is not None:
        study = StudyRuntime(**{
            **study,
            "datasets": tuple(DatasetSpec(**d) for d in study["datasets"]),
            "secret_env": tuple(SecretEnvRef(**ref) for ref in study["secret_env"]),
            "secret_mounts": tuple(SecretMount(**{**m, "items": None if m["items"] is None else tuple(
                tuple(item) for item in m["items"])}) for m in study["secret_mounts"]),
        })
    command = data["command"]
    return JobRequest(
        site=site, job_pk="0", job_id=data["job_id"], role=data["role"], job_meta=data["job_meta"],
        job_args={**data["job_args"], **credentials}, set_options=tuple(data["set_options"]), study=study,
        byoc=bool(data["byoc"]), command=tuple(command) if command is not None else None,
    )


def _resubmitted(site: Site, job_id: str, job_args: dict[str, Any]) -> Job | None:
    """The job already recorded under this id, if any (its launch queued again when stalled)."""
    existing = Job.objects.filter(site=site, job_id=job_id).first()
    if existing is None:
        return None
    from jobs.tasks import RETRY_REASONS, launch_retry_pending

    waited = timezone.now() - existing.created_at
    stalled = waited > timedelta(seconds=settings.LAUNCHER_RELAUNCH_AFTER_SECONDS)
    if existing.state in (JobState.QUEUED, JobState.STARTING) and stalled and not launch_retry_pending(existing.pk):
        # Still not running after a while: its launch may be lost (the web process died between
        # commit and enqueue, or a worker died as the broker handed it the task or between its
        # retries). The credentials came again with this submit, so queue the launch again;
        # launching is idempotent (a job no longer queued is left alone, a workload is adopted). A
        # burst of identical submits within the grace period, or while a retry is scheduled,
        # queues nothing extra. Said on the timeline, so that the job never waits without a reason.
        cut = " (its launch retries stopped: was the worker restarted?)" if existing.reason in RETRY_REASONS else ""
        existing, _ = job_note(existing, source="api", reason="Relaunched", message=(
            f"still {existing.state} more than {settings.LAUNCHER_RELAUNCH_AFTER_SECONDS} s after submit{cut}; "
            "launching it again on the FL server's re-submit"))
        _enqueue_launch(existing.pk, split_credentials(dict(job_args or {}))[1])
    return existing


def _submitted_message(user, token) -> str:
    if token is not None:
        # Never the token's prefix: viewers read events, and the prefix is part of the secret.
        kind = "site" if token.site_id else "user"
        return f"submitted with {kind} token {token.name!r}" if token.name else f"submitted with a {kind} token"
    if user is not None:
        return f"submitted by {user.get_username()}"
    return "submitted"


def _enqueue_launch(job_pk: int, credentials: dict[str, Any]) -> None:
    transaction.on_commit(lambda: _send_launch(job_pk, credentials))


def _send_launch(job_pk: int, credentials: dict[str, Any]) -> None:
    from jobs.services.lifecycle import job_observe, verdict
    from jobs.services.sealing import credentials_seal
    from jobs.tasks import job_launch_task

    try:
        # Sealed: the broker (Redis) and anyone reading its queue see ciphertext only; argsrepr keeps
        # even that out of Celery's logs and monitoring.
        job_launch_task.apply_async(args=[job_pk, credentials_seal(credentials)], argsrepr=f"({job_pk}, <sealed>)")
    except Exception as exc:  # broker (Redis) down: the credentials cannot be kept, so say so now
        job_observe(job_pk, verdict(JobState.LAUNCH_FAILED, reason="BrokerUnavailable", message=(
            f"the launch could not be queued ({type(exc).__name__}); submit it again with a new job id")), source="api")
