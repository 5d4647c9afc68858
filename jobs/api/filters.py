"""Query parameters, validated before any query runs: a bad value is a 400 naming the parameter
(`{"after": ["Enter a whole number."]}`), never a 500 and never silently ignored. The job list and
the event timeline filter through django-filter FilterSets; `tail` (logs) and `timeout` (wait) are
checked by small serializers. The schema of each parameter is declared next to its check."""

from __future__ import annotations

import datetime
import math
import re

import django_filters
from django import forms
from django.core.exceptions import ValidationError
from django.core.validators import RegexValidator
from django.db.models import Q
from drf_spectacular.utils import extend_schema_field
from rest_framework import exceptions, serializers

from backends import nvflare
from jobs.models import Job, JobEvent, State

BIGINT_MAX = 2**63 - 1
SITE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"  # jobs.models.site_name_validator
NAME_PATTERN = nvflare.NAME_RE.pattern  # study and dataset names
JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"  # nvflare.check_job_id
_INTEGER = re.compile(r"-?[0-9]{1,19}")  # ASCII digits only: int() would take "²" apart from isdigit()
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # strptime's %d would take non-ASCII digits
SEARCH_MAX = 100
SEARCH_PATTERN = r"^[^\x00-\x1f\x7f]*$"  # PostgreSQL refuses NUL in text; no control characters at all
# The API's orders: cursor pages need one fixed, unique order, and the id grows with created_at.
# The dashboard pages sort by more columns (jobs/views/job_list.py), with numbered pages.
API_ORDERINGS = {"-created": "-id", "created": "id"}
_NUMBER = re.compile(r"-?(?:[0-9]{1,19}(?:\.[0-9]{0,19})?|\.[0-9]{1,19})")


def optional(pattern: str) -> str:
    """An empty query value means "no filter"; the schema says so."""
    return f"^(?:{pattern.strip('^$')})?$"


class StrictIntegerField(forms.IntegerField):
    """A whole number in ASCII digits, nothing else ("1.0", "1e3", " 1", "²" are refused)."""

    def to_python(self, value):
        if value is None:  # absent; present but empty ("?after=") is refused like any non-number
            return None
        if not isinstance(value, str) or not _INTEGER.fullmatch(value):
            raise ValidationError(self.error_messages["invalid"], code="invalid")
        return int(value)


class IntegerFilter(django_filters.NumberFilter):
    field_class = StrictIntegerField


class StrictDateField(forms.DateField):
    """An ISO date, YYYY-MM-DD in ASCII digits, nothing else."""

    def to_python(self, value):
        if value in (None, ""):
            return None
        if not isinstance(value, str) or not _DATE.fullmatch(value):
            raise ValidationError("Enter a date as YYYY-MM-DD.", code="invalid")
        try:
            return datetime.date.fromisoformat(value)
        except ValueError:
            raise ValidationError("Enter a date as YYYY-MM-DD.", code="invalid") from None


# An empty value means "no filter", as for the other query filters (a dashboard form sends its empty
# date fields); the schema says so instead of `format: date`, which an empty string would violate.
@extend_schema_field({"type": "string", "pattern": optional(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"), "maxLength": 10,
                      "example": "2026-12-01"})
class DateFilter(django_filters.DateFilter):
    field_class = StrictDateField


def search_jobs(queryset, text: str):
    """Jobs whose name (job_meta.name) or NVFlare job id contains `text`, ignoring case."""
    return queryset.filter(Q(job_id__icontains=text) | Q(job_meta__name__icontains=text)) if text else queryset


class JobFilterForm(forms.Form):
    def clean(self):
        data = super().clean()
        after, before = data.get("created_after"), data.get("created_before")
        if after and before and after > before:
            self.add_error("created_before", "Must not be before created_after.")
        return data


def _string_filter(field_name: str, pattern: str, max_length: int, description: str) -> django_filters.CharFilter:
    schema = {"type": "string", "pattern": optional(pattern), "maxLength": max_length}
    return extend_schema_field(schema)(django_filters.CharFilter(
        field_name=field_name, max_length=max_length, validators=[RegexValidator(pattern)], help_text=description))


class JobFilter(django_filters.FilterSet):
    site = _string_filter("site__name", SITE_NAME_PATTERN, 63, "Only this site's jobs.")
    state = django_filters.MultipleChoiceFilter(choices=State.choices, help_text="Only jobs in these states.")
    study = _string_filter("study", NAME_PATTERN, 63, "Only jobs of this study.")
    job_id = _string_filter("job_id", JOB_ID_PATTERN, 128, "Only jobs with this NVFlare job id.")
    q = extend_schema_field({"type": "string", "pattern": SEARCH_PATTERN, "maxLength": SEARCH_MAX})(
        django_filters.CharFilter(
            method="filter_q", max_length=SEARCH_MAX,
            validators=[RegexValidator(r"[\x00-\x1f\x7f]", "No control characters.", inverse_match=True)],
            help_text="Only jobs whose name (`job_meta.name`) or NVFlare job id contains this, ignoring case."))
    created_after = DateFilter(field_name="created_at", lookup_expr="date__gte",
                               help_text="Only jobs created on or after this day (YYYY-MM-DD, the site's time zone).")
    created_before = DateFilter(field_name="created_at", lookup_expr="date__lte",
                                help_text="Only jobs created on or before this day (YYYY-MM-DD, inclusive).")
    # Validated here, applied by the paginator (jobs.api.jobs.JobListPagination): it owns the order.
    ordering = django_filters.ChoiceFilter(
        method="filter_ordering", choices=[(k, k) for k in API_ORDERINGS], empty_label=None,
        help_text="`-created` (newest first, the default) or `created` (oldest first).")

    class Meta:
        model = Job
        fields = ["site", "state", "study", "job_id", "q", "created_after", "created_before", "ordering"]
        form = JobFilterForm

    def filter_q(self, queryset, name, value):
        return search_jobs(queryset, value)

    def filter_ordering(self, queryset, name, value):
        return queryset


class EventFilter(django_filters.FilterSet):
    after = IntegerFilter(field_name="id", lookup_expr="gt", min_value=0, max_value=BIGINT_MAX)

    class Meta:
        model = JobEvent
        fields = ["after"]


AFTER_SCHEMA = {"type": "integer", "minimum": 0, "maximum": BIGINT_MAX}


def filtered(filterset_class, request, queryset):
    """Apply a FilterSet by hand (for actions whose queryset is not the view's)."""
    filterset = filterset_class(request.query_params, queryset=queryset, request=request)
    if not filterset.is_valid():
        raise exceptions.ValidationError(filterset.errors)
    return filterset.qs


class _QueryField:
    def get_value(self, dictionary):
        # DRF reads "?tail=" from a QueryDict as "not given"; here it is a value, and not a number.
        return dictionary.get(self.field_name, serializers.empty)


class StrictIntegerQueryField(_QueryField, serializers.IntegerField):
    def to_internal_value(self, data):
        if not isinstance(data, str) or not _INTEGER.fullmatch(data):
            self.fail("invalid")
        return super().to_internal_value(data)


class FiniteNumberQueryField(_QueryField, serializers.FloatField):
    """A plain decimal number ("1.5", "30"); no exponents, NaN or infinities."""

    def to_internal_value(self, data):
        if not isinstance(data, str) or not _NUMBER.fullmatch(data):
            self.fail("invalid")
        value = super().to_internal_value(data)
        if not math.isfinite(value):
            self.fail("invalid")
        return value


def query(serializer_class, request) -> dict:
    """The query parameters `serializer_class` declares, validated (400 naming the parameter)."""
    params = request.query_params if hasattr(request, "query_params") else request.GET  # DRF's or Django's
    serializer = serializer_class(data=params)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data
