"""The overview's job list: the API's filters (jobs.api.filters.JobFilter: state, study, name or id
search, date range) plus column sorting and the labels a row shows.

Newest first (the default) pages by id cursors (`before`/`after`), so live updates can insert new
jobs on the first page; any other order pages by number (`page`), and live updates only refresh
the rows shown. The API orders by creation only (see jobs.api.jobs.JobListPagination)."""

from __future__ import annotations

from django.db.models import (
    Case,
    DateTimeField,
    DurationField,
    ExpressionWrapper,
    F,
    IntegerField,
    TextField,
    Value,
    When,
)
from django.db.models.fields.json import KT
from django.db.models.functions import Coalesce, Lower, NullIf
from django.http import QueryDict
from django.utils import timezone

from jobs.api.filters import JobFilter
from jobs.models import Job, State

PAGE_SIZE = 50
DEFAULT_SORT = "-created"
SORTS = ("created", "name", "state", "duration")
PAGE_FILTERS = ("state", "study", "q", "created_after", "created_before")


def parse_sort(value: str | None) -> str:
    value = (value or "").strip()
    return value if value.lstrip("-") in SORTS else DEFAULT_SORT


def _ordered(jobs, sort: str):
    key, descending = sort.lstrip("-"), sort.startswith("-")
    if key == "created":
        return jobs.order_by("-id" if descending else "id")
    if key == "name":
        value = Lower(Coalesce(NullIf(KT("job_meta__name"), Value("")), F("job_id"), output_field=TextField()))
    elif key == "state":  # lifecycle order (queued ... lost), not alphabetical
        value = Case(*[When(state=s, then=Value(i)) for i, s in enumerate(State.values)], output_field=IntegerField())
    else:  # how long it ran, or has been running; never started sorts last either way
        end = Coalesce(F("finished_at"), Value(timezone.now(), output_field=DateTimeField()))
        value = ExpressionWrapper(end - F("started_at"), output_field=DurationField())
    jobs = jobs.annotate(sort_value=value)
    order = F("sort_value").desc(nulls_last=True) if descending else F("sort_value").asc(nulls_last=True)
    return jobs.order_by(order, "-id")


def site_job_list(site, params) -> dict:
    """One page of the site's jobs for the query `params` (request.GET). A bad filter value is
    reported in `errors` (per field) and left out, never a 500."""
    data = {name: params.get(name, "") for name in PAGE_FILTERS}
    base = Job.objects.filter(site=site).select_related("site", "submitted_by", "submitted_by_token")
    filterset = JobFilter(_query_dict(data), queryset=base)
    errors = {}
    if not filterset.is_valid():
        errors = {name: list(messages) for name, messages in filterset.errors.items()}
        data = {name: ("" if name in errors else value) for name, value in data.items()}
        filterset = JobFilter(_query_dict(data), queryset=base)
        filterset.is_valid()
    jobs = filterset.qs
    sort = parse_sort(params.get("sort"))
    result = {"sort": sort, "filters": data, "errors": errors, "newer": None, "older": None, "page": None,
              "next_page": None, "prev_page": None}
    if sort == DEFAULT_SORT:
        before, after = _int(params.get("before")), _int(params.get("after"))
        if after is not None:
            rows = list(jobs.filter(id__gt=after).order_by("id")[:PAGE_SIZE])[::-1]
        else:
            rows = list((jobs.filter(id__lt=before) if before is not None else jobs).order_by("-id")[:PAGE_SIZE])
        if rows and jobs.filter(id__gt=rows[0].id).exists():
            result["newer"] = rows[0].id
        if rows and jobs.filter(id__lt=rows[-1].id).exists():
            result["older"] = rows[-1].id
        result["first_page"] = before is None and after is None
    else:
        page = min(max(_int(params.get("page")) or 1, 1), 100_000)
        rows = list(_ordered(jobs, sort)[(page - 1) * PAGE_SIZE:page * PAGE_SIZE + 1])
        result.update(page=page, prev_page=page - 1 if page > 1 else None,
                      next_page=page + 1 if len(rows) > PAGE_SIZE else None, first_page=False)
        rows = rows[:PAGE_SIZE]
    result["jobs"] = rows
    return result


def _query_dict(data: dict) -> QueryDict:
    query = QueryDict(mutable=True)  # `state` is a multiple choice: read with getlist
    for name, value in data.items():
        if value:
            query[name] = value
    return query


def _int(value) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isascii() and value.isdigit() and len(value) <= 18 else None
