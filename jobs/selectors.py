"""Reads, filtered by who is asking. Staff see every site; members see their sites; a site token
sees its own site's jobs only."""

from __future__ import annotations

from django.db.models import QuerySet

from jobs.models import Job, Role, Site, SiteMembership

ROLE_ORDER = {Role.VIEWER: 0, Role.OPERATOR: 1, Role.ADMIN: 2}


def sites_visible_to(user) -> QuerySet[Site]:
    if user is None or not user.is_authenticated:
        return Site.objects.none()
    if user.is_staff:
        return Site.objects.all()
    return Site.objects.filter(memberships__user=user).distinct()


def site_role(user, site: Site) -> str | None:
    """The user's role on the site ("admin" for staff), or None."""
    if user is None or not user.is_authenticated:
        return None
    if user.is_staff:
        return Role.ADMIN
    membership = SiteMembership.objects.filter(site=site, user=user).first()
    return membership.role if membership else None


def user_may(user, site: Site, role: str) -> bool:
    have = site_role(user, site)
    return have is not None and ROLE_ORDER[Role(have)] >= ROLE_ORDER[Role(role)]


def jobs_visible_to(user) -> QuerySet[Job]:
    if user is None or not user.is_authenticated:
        return Job.objects.none()
    jobs = Job.objects.select_related("site")
    if user.is_staff:
        return jobs
    return jobs.filter(site__memberships__user=user)


# ---------------------------------------------------------------------------------------------
# Dashboard reads (the job lists themselves are in jobs/views/job_list.py); nothing here counts a
# whole table per request.
# ---------------------------------------------------------------------------------------------

def site_state_counts(site: Site) -> dict[str, int]:
    """Jobs per state for one site: one grouped count served by the (site, state, -id) index."""
    from django.db.models import Count

    from jobs.models import State

    counts = {s: 0 for s in State.values}
    for row in Job.objects.filter(site=site).order_by().values("state").annotate(n=Count("id")):
        counts[row["state"]] = row["n"]
    return counts


def job_events_after(job: Job, seq: int = 0):
    return job.events.filter(id__gt=seq).order_by("id")


def last_event_seq() -> int:
    """The newest JobEvent id anywhere: a browser resumes its websocket from here."""
    from jobs.models import JobEvent

    return JobEvent.objects.order_by("-id").values_list("id", flat=True).first() or 0


def site_studies(site: Site):
    from jobs.models import Study

    return Study.objects.filter(site=site).prefetch_related("datasets").order_by("name")


def tokens_of(*, site: Site | None = None, user=None):
    from jobs.models import ApiToken

    if site is not None:
        return ApiToken.objects.filter(site=site).select_related("created_by").order_by("-created_at")
    return ApiToken.objects.filter(user=user).order_by("-created_at")


def site_history(site: Site, *, days: int = 14) -> dict:
    """Finished jobs per day by final state, and how long finished runs took, over `days` days."""
    from datetime import timedelta

    from django.db.models import Case, Count, DurationField, ExpressionWrapper, F, IntegerField, Value, When
    from django.db.models.functions import TruncDate
    from django.utils import timezone

    from jobs.models import TERMINAL

    since = timezone.now() - timedelta(days=days)
    finished = Job.objects.filter(site=site, finished_at__gte=since, state__in=TERMINAL).order_by()
    per_day = list(finished.annotate(day=TruncDate("finished_at")).values("day", "state").annotate(n=Count("id")))
    limits = [timedelta(seconds=s) for s in (10, 60, 600, 3600, 6 * 3600)]
    ran = finished.filter(started_at__isnull=False).annotate(
        took=ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField()))
    bucket = Case(*[When(took__lt=limit, then=Value(i)) for i, limit in enumerate(limits)],
                  default=Value(len(limits)), output_field=IntegerField())
    durations = {row["bucket"]: row["n"] for row in ran.annotate(bucket=bucket).values("bucket").annotate(n=Count("id"))}
    return {"since": since, "per_day": per_day, "durations": durations}
