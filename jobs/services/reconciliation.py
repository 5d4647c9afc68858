"""site_reconcile: compare what the backend runs with what the database says, and repair drift."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from backends.base import BackendError, Handle, JobState
from jobs.models import ACTIVE, Job, OrphanWorkload, Site
from jobs.services.job_logs import job_log_save
from jobs.services.launching import job_apply_observation
from jobs.services.lifecycle import job_note, job_observe, verdict
from jobs.services.runtime_facts import backend_error_recorded, reconcile_recorded
from jobs.services.sites import site_backend

log = logging.getLogger(__name__)


@dataclass
class ReconcileReport:
    site: str
    checked: int = 0
    changed: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)


def site_reconcile(*, site: Site) -> ReconcileReport:
    """_site_reconcile, its outcome recorded for the site's health (jobs.services.site_health)."""
    from jobs.services.site_health import site_health_reconciled

    started = time.monotonic()  # duration, drift and errors for /metrics (jobs.services.runtime_facts)
    try:
        report = _site_reconcile(site=site)
    except BackendError as exc:
        reconcile_recorded(site_pk=site.pk, seconds=time.monotonic() - started, drift=None)
        backend_error_recorded(exc, operation="reconcile", site_pk=site.pk)
        site_health_reconciled(site_pk=site.pk, error=str(exc))
        raise
    reconcile_recorded(site_pk=site.pk, seconds=time.monotonic() - started, drift=len(report.changed))
    site_health_reconciled(site_pk=site.pk, report=report)
    return report


def _site_reconcile(*, site: Site) -> ReconcileReport:
    """One pass over a site: every non-terminal job against the backend's list of managed
    workloads. A missed exit is recorded with its exit code; a workload that vanished -> lost; a
    managed workload no job claims -> recorded as an orphan (never deleted); a workload of a job
    whose launch was never recorded -> adopted; a workload still running for a job that already
    ended (terminated before launch completed) -> terminated. Idempotent, and safe beside the
    watcher and the workers: every change goes through the lifecycle door, which locks the job row.
    Raises BackendError when the backend cannot be reached."""
    backend = site_backend(site)
    report = ReconcileReport(site=site.name)
    observed = {o.ref: o for o in backend.list_managed()}
    jobs_by_pk = {}

    for job in Job.objects.filter(site=site, state__in=ACTIVE).exclude(handle=None).select_related("site"):
        report.checked += 1
        jobs_by_pk[str(job.pk)] = job
        ref = job.handle["ref"]
        observation = observed.get(ref) or backend.inspect(
            Handle(**job.handle), terminate_requested=job.terminate_requested_at is not None)
        before = job.state
        if observation.state is JobState.LOST:
            job, _ = job_observe(job, verdict(JobState.LOST, reason="vanished",
                                              message=f"{ref} no longer exists and no exit was recorded"),
                                 source="reconcile")
        else:
            job = job_apply_observation(observation, source="reconcile", job=job)
        if job and job.state != before:
            report.changed.append(f"{job.job_id}: {before} -> {job.state}")

    claimed = set(Job.objects.filter(site=site, pk__in=[int(o.job_pk) for o in observed.values() if (o.job_pk or "").isdigit()])
                  .values_list("pk", flat=True))
    for ref, observation in observed.items():
        pk = int(observation.job_pk) if (observation.job_pk or "").isdigit() else None
        if pk is None or pk not in claimed:
            OrphanWorkload.objects.update_or_create(
                site=site, ref=ref, defaults={"state": observation.state.value, "detail": observation.message[:1000]})
            report.orphans.append(ref)
            continue
        if str(pk) in jobs_by_pk:
            continue
        job = Job.objects.select_related("site").get(pk=pk)
        if job.is_terminal:
            _settle_leftover(backend, job, observation)
        elif not job.handle:
            # Launched, but the launch was never recorded (its worker died in between): adopt it.
            before = job.state
            job = job_apply_observation(observation, source="reconcile", job=job)
            if job and job.state != before:
                report.changed.append(f"{job.job_id}: {before} -> {job.state} (adopted {ref})")
    OrphanWorkload.objects.filter(site=site).exclude(ref__in=report.orphans).delete()
    return report


def _settle_leftover(backend, job: Job, observation) -> None:
    """A workload of a job whose record is complete: stop it if it still runs (cleanup refuses a
    running one), then remove it."""
    handle = Handle(backend=backend.kind, ref=observation.ref)
    if observation.state.is_terminal and not job.logs_tail:  # its recorder died before saving the tail
        job_note(job, source="reconcile", logs_tail=observation.logs_tail)
    if observation.state.is_terminal and not hasattr(job, "full_log"):  # nor the whole output (job_logs)
        try:
            job_log_save(job.pk, backend, handle)
        except Exception:
            log.warning("could not keep the output of leftover %s", observation.ref, exc_info=True)
    try:
        if not observation.state.is_terminal:
            backend.terminate(handle)
        backend.cleanup(handle)
    except BackendError as exc:
        backend_error_recorded(exc, operation="cleanup", site_pk=job.site_id)
        log.warning("could not remove leftover %s of finished job %s", observation.ref, job.job_id, exc_info=True)


def sites_reconcile() -> list[ReconcileReport]:
    """Reconcile every site; one unreachable backend does not stop the others."""
    reports = []
    for site in Site.objects.all():
        try:
            reports.append(site_reconcile(site=site))
        except BackendError as exc:
            log.warning("reconcile of site %s skipped: %s", site.name, exc)
    return reports
