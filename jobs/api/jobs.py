"""Jobs: launch (POST), list/filter, read, events, logs, terminate. Reads go through the access
helpers; each write is one service call (job_submit, job_request_terminate) plus an audit entry.
The long-poll `wait` is an async view of its own (jobs/api/wait.py)."""

from __future__ import annotations

from django.conf import settings
from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import (
    OpenApiExample,
    OpenApiParameter,
    OpenApiResponse,
    extend_schema,
    extend_schema_view,
)
from rest_framework import mixins, serializers, status, viewsets
from rest_framework.decorators import action
from rest_framework.response import Response

from backends.logtail import cap_tail
from jobs.api import access
from jobs.api.base import ApiMixin
from jobs.api.filters import (
    AFTER_SCHEMA,
    API_ORDERINGS,
    EventFilter,
    JobFilter,
    StrictIntegerQueryField,
    filtered,
    query,
)
from jobs.api.pagination import EventCursorPagination, JobCursorPagination
from jobs.api.schema import JOB_PK_SCHEMA, error_response
from jobs.api.serializers import (
    JobDetailSchemaSerializer,
    JobDetailSerializer,
    JobEventSerializer,
    JobLogsSerializer,
    JobSerializer,
    JobSubmitSerializer,
    JobSubmitterDetailSerializer,
)
from jobs.models import JobEvent
from jobs.payloads import job_payload
from jobs.services import job_logs
from jobs.services.audit import actor_label
from jobs.services.cancellation import job_request_terminate
from jobs.services.submission import job_submit

LOGS_MAX_TAIL = 10_000


BACKEND_ERRORS = {502: error_response(502), 503: error_response(503)}
# What NVFlare's client parent sends (credentials are never stored or returned).
LAUNCH_EXAMPLE = {
    "site": "site-1", "job_id": "0f6a2c5e-job", "role": "client",
    "job_meta": {"job_id": "0f6a2c5e-job", "name": "hello-pt", "study": "cohort-a"},
    "job_args": {
        "exe_module": ["-m", "nvflare.private.fed.app.client.worker_process"],
        "workspace": ["-m", "/var/tmp/nvflare/site-1"], "startup_dir": ["-w", "/var/tmp/nvflare/site-1/startup"],
        "job_id": ["-n", "0f6a2c5e-job"], "client_name": ["-c", "site-1"],
        "parent_url": ["-p", "tcp://localhost:8004"], "parent_conn_sec": ["--parent_conn_sec", "clear"],
        "scheme": ["-scheme", "tcp"], "startup_config_file": ["-s", "fed_client.json"],
        "auth_token": ["-t", "<token>"], "auth_signature": ["-ts", "<signature>"], "ssid": ["-d", "<ssid>"],
    },
    "set_options": ["print_conf=True"],
}


class LogsQuery(serializers.Serializer):
    tail = StrictIntegerQueryField(required=False, min_value=1, max_value=LOGS_MAX_TAIL, help_text=(
        f"Lines, 1-{LOGS_MAX_TAIL} (default LAUNCHER_LOGS_TAIL_LINES); the answer is at most "
        "LAUNCHER_LOGS_TAIL_BYTES either way."))
    full = serializers.BooleanField(required=False, default=False, help_text=(
        "1: the whole output as a text/plain attachment (at most LAUNCHER_LOGS_KEEP_BYTES: a longer "
        "output keeps its start and its end)."))


class JobListPagination(JobCursorPagination):
    """Cursor pages in the order `?ordering=` asked for (JobFilter has validated it by now): newest
    or oldest first, both on the unique id. Name, state or duration orders are the dashboard's only:
    a cursor over a changing or repeated value (a state, a running duration) would skip or repeat jobs."""

    def get_ordering(self, request, queryset, view):
        return (API_ORDERINGS.get(request.query_params.get("ordering") or "-created", "-id"),)


JOB_PK = OpenApiParameter("id", JOB_PK_SCHEMA, OpenApiParameter.PATH, description="The job's `id`.")


@extend_schema_view(
    list=extend_schema(responses=JobSerializer(many=True)),
    retrieve=extend_schema(parameters=[JOB_PK], responses=JobDetailSchemaSerializer),
)
class JobViewSet(ApiMixin, mixins.ListModelMixin, mixins.RetrieveModelMixin, viewsets.GenericViewSet):
    """NVFlare jobs. A site token sees and acts on its own site's jobs only."""

    serializer_class = JobSerializer
    pagination_class = JobListPagination
    filterset_class = JobFilter
    lookup_value_regex = "[0-9]{1,18}"  # anything else is a 404 before any query
    never_forbidden = ("list", "retrieve", "events", "logs")  # jobs the caller may not see are 404s

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
        examples=[OpenApiExample("An NVFlare client job", request_only=True, value=LAUNCH_EXAMPLE)],
        responses={201: JobSerializer, 200: OpenApiResponse(JobSerializer, description="Already submitted: the existing job."),
                   400: error_response(400, "Invalid input; the body names the field (`job_args.workspace`, ...)."),
                   403: error_response(403, "Not allowed to launch on that site (a viewer, or another site's token)."),
                   **BACKEND_ERRORS},
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
        return Response(job_payload(job), status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)

    @extend_schema(request=None, parameters=[JOB_PK], responses={202: JobSerializer, **BACKEND_ERRORS})
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
        return Response(job_payload(job), status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        parameters=[JOB_PK, OpenApiParameter("after", AFTER_SCHEMA, description="Only events with a larger seq.")],
        responses=JobEventSerializer(many=True),
    )
    @action(detail=True, methods=["get"], pagination_class=EventCursorPagination, filterset_class=None,
            filter_backends=[])
    def events(self, request, pk=None):
        """The job's timeline; `seq` is the sequence number websocket messages carry."""
        job = access.job_for(request, pk)
        events = filtered(EventFilter, request, JobEvent.objects.filter(job=job))
        page = self.paginate_queryset(events)
        return self.get_paginated_response(JobEventSerializer(page, many=True).data)

    @extend_schema(parameters=[JOB_PK, LogsQuery], responses={
        (200, "application/json"): JobLogsSerializer,
        (200, "text/plain"): OpenApiResponse(OpenApiTypes.STR, description="full=1: the whole output, an attachment."),
        **BACKEND_ERRORS})
    @action(detail=True, methods=["get"], filterset_class=None, filter_backends=[])
    def logs(self, request, pk=None):
        """The last `tail` lines of output (at most LAUNCHER_LOGS_TAIL_BYTES): the saved tail once the
        job ended, else live from the backend."""
        job = access.job_for(request, pk)
        params = query(LogsQuery, request)
        if params.get("full"):
            return job_logs.download_response(job)
        tail = params.get("tail") or min(settings.LAUNCHER_LOGS_TAIL_LINES or 200, LOGS_MAX_TAIL)
        if job.is_terminal or not job.handle:
            text, source = job.logs_tail, ("saved" if job.logs_tail else "none")
        else:
            text, source = job_logs.job_live_tail(job, tail), "live"
        text = cap_tail(text, lines=tail)
        return Response({"job": job.pk, "source": source, "tail": tail, "logs": text})
