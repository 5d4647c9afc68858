"""Jobs: launch (POST), list/filter, read, events, logs, terminate. Reads go through the access
helpers; each write is one service call (job_submit, job_request_terminate) plus an audit entry.
The long-poll `wait` is an async view of its own (jobs/api/wait.py)."""

from __future__ import annotations

import django_filters
from django.conf import settings
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiParameter,
    OpenApiResponse,
    PolymorphicProxySerializer,
    extend_schema,
    extend_schema_view,
)
from rest_framework import exceptions, mixins, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from backends.base import Handle
from backends.logtail import cap_tail
from jobs.api import access
from jobs.api.base import ApiMixin
from jobs.api.pagination import EventCursorPagination, JobCursorPagination
from jobs.api.serializers import (
    JobDetailSerializer,
    JobEventSerializer,
    JobLogsSerializer,
    JobSerializer,
    JobSubmitSerializer,
    JobSubmitterDetailSerializer,
)
from jobs.models import Job, JobEvent, State
from jobs.services.audit import actor_label
from jobs.services.cancellation import job_request_terminate
from jobs.services.sites import site_backend
from jobs.services.submission import job_submit

LOGS_MAX_TAIL = 10_000


class JobFilter(django_filters.FilterSet):
    site = django_filters.CharFilter(field_name="site__name")
    state = django_filters.MultipleChoiceFilter(choices=State.choices)
    study = django_filters.CharFilter()
    job_id = django_filters.CharFilter()

    class Meta:
        model = Job
        fields = ["site", "state", "study", "job_id"]


@extend_schema_view(
    list=extend_schema(responses=JobSerializer(many=True)),
    retrieve=extend_schema(responses=PolymorphicProxySerializer(
        component_name="JobDetailOrSubmitterView", serializers=[JobDetailSerializer, JobSubmitterDetailSerializer],
        resource_type_field_name=None)),
)
class JobViewSet(ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """NVFlare jobs. A site token sees and acts on its own site's jobs only."""

    serializer_class = JobSerializer
    pagination_class = JobCursorPagination
    filterset_class = JobFilter

    def get_queryset(self):
        return access.jobs_for(self.request).select_related("site")

    def get_serializer_class(self):
        if self.action != "retrieve":
            return JobSerializer
        return JobSubmitterDetailSerializer if access.is_site_token(self.request.user) else JobDetailSerializer

    def get_object(self):
        return access.job_for(self.request, self.kwargs["pk"])

    @extend_schema(
        request=JobSubmitSerializer,
        responses={201: JobSerializer, 200: OpenApiResponse(JobSerializer, description="Already submitted: the existing job."),
                   400: OpenApiResponse(description="Invalid input; the body names the field."),
                   403: OpenApiResponse(description="Not allowed to launch on that site.")},
    )
    def create(self, request):
        """Launch a job: NVFlare job meta plus JOB_PROCESS_ARGS. Idempotent on (site, job_id): the
        same job again returns the existing job (200) and never starts a second workload."""
        given = JobSubmitSerializer(data=request.data)
        given.is_valid(raise_exception=True)
        data = given.validated_data
        site = access.launch_site_for(request, data["site"])
        job, created = job_submit(
            site=site, job_id=data["job_id"], role=data["role"], job_meta=data["job_meta"],
            job_args=data["job_args"], set_options=data["set_options"] or None,
            submitted_by=access.account_of(request), submitted_by_token=access.token_of(request), source="api",
            on_created=lambda job: self.audit("job.launch", f"job:{job.pk}", {
                "site": site.name, "job_id": job.job_id, "study": job.study, "role": job.role}),
        )
        return Response(JobSerializer(job).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, responses={202: JobSerializer})
    @action(detail=True, methods=["post"])
    def terminate(self, request, pk=None):
        """Ask the job to stop (operators and the site's token). Idempotent: 202 every time."""
        job = access.job_for(request, pk, role="operator")
        was_terminal = job.is_terminal
        with transaction.atomic():
            job = job_request_terminate(job=job, source="api", requested_by=actor_label(
                user=access.account_of(request), token=access.token_of(request)))
            if not was_terminal:
                self.audit("job.terminate", f"job:{job.pk}", {"site": job.site.name, "job_id": job.job_id})
        return Response(JobSerializer(job).data, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[OpenApiParameter("after", OpenApiTypes.INT, description="Only events with a larger seq.")],
        responses=JobEventSerializer(many=True),
    )
    @action(detail=True, methods=["get"], pagination_class=EventCursorPagination, filterset_class=None,
            filter_backends=[])
    def events(self, request, pk=None):
        """The job's timeline; `seq` is the sequence number websocket messages carry."""
        job = access.job_for(request, pk)
        events = JobEvent.objects.filter(job=job)
        after = request.query_params.get("after")
        if after is not None:
            if not after.isdigit():
                raise exceptions.ValidationError({"after": ["Must be a non-negative integer."]})
            events = events.filter(id__gt=int(after))
        page = self.paginate_queryset(events)
        return self.get_paginated_response(JobEventSerializer(page, many=True).data)

    @extend_schema(
        parameters=[OpenApiParameter("tail", OpenApiTypes.INT, description=f"Lines, 1-{LOGS_MAX_TAIL}; "
                                     "the answer is at most LAUNCHER_LOGS_TAIL_BYTES either way.")],
        responses=JobLogsSerializer,
    )
    @action(detail=True, methods=["get"], filterset_class=None, filter_backends=[])
    def logs(self, request, pk=None):
        """The last `tail` lines of output (at most LAUNCHER_LOGS_TAIL_BYTES): the saved tail once the
        job ended, else live from the backend."""
        job = access.job_for(request, pk)
        tail = _int_param(request, "tail", default=min(settings.LAUNCHER_LOGS_TAIL_LINES or 200, LOGS_MAX_TAIL), low=1,
                          high=LOGS_MAX_TAIL)
        if job.is_terminal or not job.handle:
            text, source = job.logs_tail, ("saved" if job.logs_tail else "none")
        else:
            text, source = site_backend(job.site).logs(Handle(**job.handle), tail=tail), "live"
        text = cap_tail(text, lines=tail)
        return Response({"job": job.pk, "source": source, "tail": tail, "logs": text})


def _int_param(request, name: str, *, default: int, low: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise exceptions.ValidationError({name: ["Must be an integer."]}) from None
    if not low <= value <= high:
        raise exceptions.ValidationError({name: [f"Must be between {low} and {high}."]})
    return value
