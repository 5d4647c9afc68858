"""GET/PUT a site's studies as NVFlare's files: study_data.yaml (v1) and study_runtime.yaml (v2)."""

from __future__ import annotations

from django.db import transaction
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiResponse, extend_schema
from rest_framework import exceptions, renderers
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api import access
from jobs.api.base import ApiMixin
from jobs.api.parsers import YAML_PARSERS, LimitedJSONParser, YAMLRenderer
from jobs.services import study_files

V1_EXAMPLE = "cohort-a:\n  ct-scans:\n    source: /data/hospital/ct\n    mode: ro\n"
V2_EXAMPLE = ("format_version: 2\nstudies:\n  cohort-a:\n    container:\n      image: nvflare/pt:2.7\n"
              "    datasets:\n      ct-scans:\n        source: /data/hospital/ct\n        mode: ro\n    env:\n      LOG_LEVEL: info\n")


class _StudyFileView(ApiMixin, APIView):
    parser_classes = [*YAML_PARSERS, LimitedJSONParser]  # JSON is YAML too
    renderer_classes = [YAMLRenderer, renderers.JSONRenderer]
    field: str  # error key: "study_data" / "study_runtime"
    action_name: str

    def export(self, site):
        raise NotImplementedError

    def replace(self, site, data):
        raise NotImplementedError

    def finalize_response(self, request, response, *args, **kwargs):
        if response.status_code >= 400:  # errors keep the API's one JSON shape
            request.accepted_renderer = renderers.JSONRenderer()
            request.accepted_media_type = "application/json"
        return super().finalize_response(request, response, *args, **kwargs)

    def get(self, request, site):
        return Response(self.export(access.site_for(request, site)))

    def put(self, request, site):
        site_obj = access.site_for(request, site, role="admin")
        try:
            with transaction.atomic():
                parsed = self.replace(site_obj, request.data)
                self.audit(self.action_name, f"site:{site_obj.name}", {"studies": sorted(parsed)})
        except study_files.StudyFileError as exc:
            raise exceptions.ValidationError({self.field: [str(exc)]}) from None
        return Response(self.export(site_obj))


class StudyDataView(_StudyFileView):
    """The site's `local/study_data.yaml` (v1): study -> dataset -> {source, mode}. PUT replaces
    every study's datasets at once (all or nothing); studies missing from the file lose their
    datasets but keep their other settings."""

    field = "study_data"
    action_name = "study_data.replace"

    def export(self, site):
        return study_files.study_data_export(site)

    def replace(self, site, data):
        return study_files.study_data_replace(site, data=data)

    @extend_schema(responses={(200, "application/yaml"): OpenApiTypes.OBJECT},
                   examples=[OpenApiExample("study_data.yaml", value=V1_EXAMPLE, response_only=True)])
    def get(self, request, site):
        return super().get(request, site)

    @extend_schema(request={"application/yaml": OpenApiTypes.OBJECT},
                   responses={(200, "application/yaml"): OpenApiTypes.OBJECT,
                              400: OpenApiResponse(description="The file, with the study/dataset and reason.")},
                   examples=[OpenApiExample("study_data.yaml", value=V1_EXAMPLE, request_only=True)])
    def put(self, request, site):
        return super().put(request, site)


class StudyRuntimeView(_StudyFileView):
    """The site's `local/study_runtime.yaml` (v2, format_version 2). PUT replaces the runtime of
    every study at once (all or nothing); studies missing from the file get an empty runtime.
    `secret_env`, `secret_mounts` and `slurm` are refused: not supported by FLARE Launcher yet."""

    field = "study_runtime"
    action_name = "study_runtime.replace"

    def export(self, site):
        return study_files.study_runtime_export(site)

    def replace(self, site, data):
        return study_files.study_runtime_replace(site, data=data, actor=self.request.user)

    @extend_schema(responses={(200, "application/yaml"): OpenApiTypes.OBJECT},
                   examples=[OpenApiExample("study_runtime.yaml", value=V2_EXAMPLE, response_only=True)])
    def get(self, request, site):
        return super().get(request, site)

    @extend_schema(request={"application/yaml": OpenApiTypes.OBJECT},
                   responses={(200, "application/yaml"): OpenApiTypes.OBJECT,
                              400: OpenApiResponse(description="The file, with the study/dataset and reason.")},
                   examples=[OpenApiExample("study_runtime.yaml", value=V2_EXAMPLE, request_only=True)])
    def put(self, request, site):
        return super().put(request, site)
