"""GET/PUT a site's studies as NVFlare's files: study_data.yaml (v1) and study_runtime.yaml (v2)."""

from __future__ import annotations

import yaml
from django.db import transaction
from django.http import Http404
from drf_spectacular.utils import OpenApiExample, extend_schema
from rest_framework import exceptions, renderers
from rest_framework.negotiation import DefaultContentNegotiation
from rest_framework.response import Response
from rest_framework.views import APIView

from jobs.api import access
from jobs.api.base import ApiMixin
from jobs.api.parsers import YAML_PARSERS, LimitedJSONParser, YAMLRenderer
from jobs.api.schema import error_response
from jobs.services import study_files

V1_EXAMPLE = "cohort-a:\n  ct-scans:\n    source: /data/hospital/ct\n    mode: ro\n"
V2_EXAMPLE = ("format_version: 2\nstudies:\n  cohort-a:\n    container:\n      image: nvflare/pt:2.7\n"
              "    datasets:\n      ct-scans:\n        source: /data/hospital/ct\n        mode: ro\n    env:\n      LOG_LEVEL: info\n")
# What the files may hold, as strictly as study_files checks it (names of studies and datasets are
# map keys: OpenAPI 3.0 cannot constrain them; the 400 names a bad one).
_SOURCE = {"type": "string", "minLength": 1}
_MODE = {"type": "string", "enum": list(study_files.MODES)}
STUDY_DATA_SCHEMA = {
    "type": "object",
    "description": "study -> dataset -> {source, mode} (NVFlare's v1 local/study_data.yaml).",
    "additionalProperties": {"type": "object", "additionalProperties": {
        "type": "object", "properties": {"source": _SOURCE, "mode": _MODE}, "required": ["source", "mode"],
        "additionalProperties": False}},
}
_ANY_OBJECT = {"type": "object", "additionalProperties": {}}
_RUNTIME_STUDY = {
    "type": "object",
    "properties": {
        "container": {"type": "object", "properties": {"image": {"type": "string", "minLength": 1}},
                      "required": ["image"], "additionalProperties": False},
        "pod_template": {**_ANY_OBJECT, "description": "An inline Pod manifest (kind: Pod)."},
        "docker_kwargs": _ANY_OBJECT,
        "datasets": {"type": "object", "additionalProperties": {
            "type": "object", "properties": {"type": {"type": "string", "enum": ["mount"]}, "source": _SOURCE,
                                             "mode": _MODE},
            "required": ["source", "mode"], "additionalProperties": False}},
        "env": {"type": "object", "additionalProperties": {
            "oneOf": [{"type": "string", "minLength": 1}, {"type": "number"}, {"type": "boolean"}]}},
        "secret_env": {
            "type": "object",
            "description": "NAME -> {source, key}. Docker: source names a launcher environment variable that "
                           "staff listed in docker.secret_env_sources (key unused); Kubernetes: a Secret and its key.",
            "additionalProperties": {"type": "object", "properties": {"source": _SOURCE, "key": _SOURCE},
                                     "required": ["source", "key"], "additionalProperties": False}},
        "secret_mounts": {
            "type": "object",
            "description": "name -> read-only mount. Docker: source is a host path under the site's data roots; "
                           "Kubernetes: a Secret, with `items` (key -> path) to project some keys.",
            "additionalProperties": {"type": "object", "properties": {
                "source": _SOURCE, "mount_path": {"type": "string", "pattern": "^/"},
                "mode": {"type": "string", "enum": ["ro"]},
                "items": {"type": "object", "minProperties": 1, "additionalProperties": _SOURCE}},
                "required": ["source", "mount_path"], "additionalProperties": False}},
        "slurm": {**_ANY_OBJECT, "description": "Slurm-only: refused by every backend here (NVFlare's rule)."},
    },
    "additionalProperties": False,
}
STUDY_RUNTIME_SCHEMA = {
    "type": "object",
    "description": "NVFlare's v2 local/study_runtime.yaml. `slurm` is refused (Slurm-only).",
    "properties": {
        "format_version": {"type": "integer", "enum": [study_files.FORMAT_VERSION]},
        "studies": {"type": "object", "nullable": True, "additionalProperties": _RUNTIME_STUDY},
    },
    "required": ["format_version"],
    "additionalProperties": False,
}
# Served as YAML (the default) or JSON (Accept: application/json); read as either.
RESPONSE_TYPES = ("application/yaml", "application/json")
REQUEST_TYPES = ("application/yaml", "application/x-yaml", "text/yaml", "application/json")
BAD_FILE = error_response(400, "The file is not valid: the study/dataset and the reason.")


def _file_schema(schema: dict, v_example: str, name: str, *, nullable_request: bool) -> dict:
    request_schema = {**schema, "nullable": True} if nullable_request else schema
    example = yaml.safe_load(v_example)
    return {
        "get": extend_schema(responses={(200, media): schema for media in RESPONSE_TYPES},
                             examples=[OpenApiExample(name, value=example, response_only=True)]),
        "put": extend_schema(request={media: request_schema for media in REQUEST_TYPES},
                             responses={**{(200, media): schema for media in RESPONSE_TYPES},
                                        (400, "application/json"): BAD_FILE},
                             examples=[OpenApiExample(name, value=example)]),
    }


V1_DOCS = _file_schema(STUDY_DATA_SCHEMA, V1_EXAMPLE, "study_data.yaml", nullable_request=True)
V2_DOCS = _file_schema(STUDY_RUNTIME_SCHEMA, V2_EXAMPLE, "study_runtime.yaml", nullable_request=False)


class _FormatNegotiation(DefaultContentNegotiation):
    """`?format=json|yaml` picks the answer's type (as DRF does); an empty or unknown one is a 404
    (DRF would ignore an empty one), so the `format` parameter is exactly what the schema says."""

    def select_renderer(self, request, renderers, format_suffix=None):
        if format_suffix is None and request.query_params.get(self.settings.URL_FORMAT_OVERRIDE) == "":
            raise Http404("No such format.")
        return super().select_renderer(request, renderers, format_suffix)


class _StudyFileView(ApiMixin, APIView):
    parser_classes = [*YAML_PARSERS, LimitedJSONParser]  # JSON is YAML too
    renderer_classes = [YAMLRenderer, renderers.JSONRenderer]
    content_negotiation_class = _FormatNegotiation
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

    @V1_DOCS["get"]
    def get(self, request, site):
        return super().get(request, site)

    @V1_DOCS["put"]
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

    @V2_DOCS["get"]
    def get(self, request, site):
        return super().get(request, site)

    @V2_DOCS["put"]
    def put(self, request, site):
        return super().put(request, site)
