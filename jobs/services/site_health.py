"""Site health: is a site's engine reachable, who watches it, when it was last reconciled and what
that repaired, and which workloads no job claims.

Writers (the watcher on connect/disconnect, reconcile at its end) record facts in one SiteHealth
row per site; readers combine that row with the watcher lease and the orphan rows. Every process
(web workers, the Celery worker, `manage.py watch`) shares only the database, so that is where the
facts live. A failed health write is logged and never stops the watcher or the reconcile.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from functools import wraps

from django.conf import settings
from django.db.models import Count
from django.utils import timezone

from jobs.models import Site, SiteHealth, State
from jobs.selectors import sites_visible_to
from jobs.services.notifications import site_unhealthy_notify

log = logging.getLogger(__name__)
ERROR_REWRITE_SECONDS = 60  # the same watcher error is written again at most this often (reconnect loops)
SUMMARY_MAX = 2000


def _never_raise(function):
    @wraps(function)
    def wrapper(**kwargs):
        try:
            function(**kwargs)
        except Exception:  # health is a report: losing one write must not stop the caller
            log.warning("site health: %s failed", function.__name__, exc_info=True)
    return wrapper


@_never_raise
def site_health_connected(*, site_pk: int) -> None:
    SiteHealth.objects.update_or_create(site_id=site_pk, defaults={"watcher_connected_at": timezone.now()})


@_never_raise
def site_health_disconnected(*, site_pk: int, error: str) -> None:
    now = timezone.now()
    error = (error or "stream ended")[:SUMMARY_MAX]
    row = SiteHealth.objects.filter(site_id=site_pk).first()
    if row and row.watcher_connected_at is None and row.watcher_error == error and row.watcher_error_at \
            and now - row.watcher_error_at < timedelta(seconds=ERROR_REWRITE_SECONDS):
        return  # still down with the same error: a backoff loop must not write on every attempt
    site_unhealthy_notify(site_pk=site_pk, row=row, error=error)  # only on the flip to unreachable
    SiteHealth.objects.update_or_create(site_id=site_pk, defaults={
        "watcher_connected_at": None, "watcher_error": error, "watcher_error_at": now})


@_never_raise
def site_health_reconciled(*, site_pk: int, report=None, error: str = "") -> None:
    """At the end of a reconcile: its ReconcileReport, or the error that stopped it."""
    if report is not None:
        repaired = "; ".join(report.changed) or "nothing to repair"
        summary = f"checked {report.checked} job(s): {repaired}; {len(report.orphans)} orphan workload(s)"
    else:
        summary = f"failed: {error}"
        site_unhealthy_notify(site_pk=site_pk, row=SiteHealth.objects.filter(site_id=site_pk).first(), error=error)
    SiteHealth.objects.update_or_create(site_id=site_pk, defaults={
        "reconciled_at": timezone.now(), "reconcile_ok": report is not None, "reconcile_summary": summary[:SUMMARY_MAX]})


def reconcile_stale_seconds() -> int:
    # Celery beat reconciles every LAUNCHER_RECONCILE_SECONDS; several missed rounds mean it stopped.
    return max(300, 10 * settings.LAUNCHER_RECONCILE_SECONDS)


@dataclass
class Health:
    site: Site
    lease_holder: str | None = None
    connected_since: datetime | None = None
    engine_reachable: bool | None = None  # None: nothing has talked to it yet
    engine_error: str = ""
    reconciled_at: datetime | None = None
    reconcile_ok: bool | None = None
    reconcile_summary: str = ""
    orphans: int = 0
    counts: dict = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    @property
    def ok(self) -> bool:
        return not self.problems


def _health(site: Site, row: SiteHealth | None, owner, expires_at, orphans: int, now) -> Health:
    h = Health(site=site, orphans=orphans)
    if owner is not None and expires_at is not None and expires_at > now:
        h.lease_holder = owner
    if row is not None:
        h.reconciled_at, h.reconcile_ok, h.reconcile_summary = row.reconciled_at, row.reconcile_ok, row.reconcile_summary
        if h.lease_holder and row.watcher_connected_at:
            h.connected_since = row.watcher_connected_at
        failed_at = row.watcher_error_at if row.watcher_connected_at is None else None
        if row.reconcile_ok is False and (failed_at is None or row.reconciled_at > failed_at):
            failed_at, h.engine_error = row.reconciled_at, row.reconcile_summary.removeprefix("failed: ")
        elif failed_at is not None:
            h.engine_error = row.watcher_error
        last_ok = max((t for t in (row.watcher_connected_at, row.reconciled_at if row.reconcile_ok else None) if t),
                      default=None)
        if failed_at is not None and (last_ok is None or failed_at >= last_ok):
            h.engine_reachable = False
        elif last_ok is not None:
            h.engine_reachable, h.engine_error = True, ""
    if h.engine_reachable is False:
        h.problems.append(f"Engine unreachable: {h.engine_error}")
    if h.lease_holder is None:
        h.problems.append("No watcher holds this site's lease: job state changes are not being followed.")
    elif h.connected_since is None:
        h.problems.append("The watcher holding the lease is not connected to the engine.")
    if h.reconcile_ok is False:
        h.problems.append(f"Last reconcile {h.reconcile_summary}")
    elif h.reconciled_at is None:
        h.problems.append("Never reconciled.")
    elif (now - h.reconciled_at).total_seconds() > reconcile_stale_seconds():
        h.problems.append(f"Last reconcile is too old ({h.reconciled_at:%Y-%m-%d %H:%M:%S} UTC).")
    return h


def sites_health(sites) -> list[Health]:
    """Health of each site in the queryset: three queries whatever the number of sites."""
    now = timezone.now()
    rows = sites.annotate(orphan_count=Count("orphans")).select_related("watcher_lease").order_by("name")
    sites = list(rows)
    health_rows = {r.site_id: r for r in SiteHealth.objects.filter(site__in=[s.pk for s in sites])}
    result = []
    for site in sites:
        lease = getattr(site, "watcher_lease", None)
        result.append(_health(site, health_rows.get(site.pk), lease and lease.owner, lease and lease.expires_at,
                              site.orphan_count, now))
    return result


def site_health(site: Site) -> Health:
    return sites_health(Site.objects.filter(pk=site.pk))[0]


def sites_health_visible_to(user) -> list[Health]:
    """The home page: every site the user may see, with its health and its jobs per state."""
    from jobs.models import Job

    healths = sites_health(sites_visible_to(user))
    counts = {h.site.pk: {s: 0 for s in State.values} for h in healths}
    for site_id, state, n in (Job.objects.filter(site_id__in=counts).order_by()
                              .values_list("site_id", "state").annotate(n=Count("id"))):
        counts[site_id][state] = n
    for h in healths:
        h.counts = counts[h.site.pk]
    return healths
