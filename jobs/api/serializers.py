"""API input and output shapes. The job serializers declare the job payload (jobs.payloads) for the
schema and answer with it.

Input serializers check what the schema declares for them: shapes, types, patterns, lengths and
unknown keys (so anything the schema calls invalid is a 400 naming the field, whatever the site's
backend); the rules beyond that live in the services they feed (jobs.services.catalog / submission)."""

from __future__ import annotations

from django.core.validators import RegexValidator
from drf_spectacular.utils import extend_schema_field, extend_schema_serializer
from rest_framework import serializers

from backends import config_class, nvflare
from jobs.api.filters import JOB_ID_PATTERN, NAME_PATTERN, SITE_NAME_PATTERN, optional
from jobs.models import AuditEntry, Backend, Dataset, DatasetMode, Job, JobEvent, JobRole, Site, Study
from jobs.payloads import (
    JOB_DETAIL_FIELDS,
    JOB_FIELDS,
    JOB_SUBMITTER_DETAIL_FIELDS,
    job_detail_payload,
    job_payload,
    job_url,
)

# job_meta keys accepted on launch: NVFlare's JobMetaKey values (nvflare/apis/job_def.py), which the
# FL parent may pass through unchanged, plus the `byoc` marker (accepted and ignored: only the site
# decides BYOC). Only job_id, study, resource_spec and launcher_spec affect the launch; the rest is
# kept on the record for the dashboard. Anything else is refused (400), never silently ignored.
JOB_META_LAUNCH_KEYS = ("job_id", "study", "resource_spec", "launcher_spec")
JOB_META_INFO_KEYS = (
    "name", "scope", "custom_props", "job_folder_name", "submitter_name", "submitter_org", "submitter_role",
    "status", "data_storage_format", "deploy_map", "content_location", "result_location", "approvals",
    "min_clients", "mandatory_clients", "submit_time", "submit_time_iso", "start_time", "duration",
    "job_deploy_detail", "schedule_count", "cloned_from", "last_schedule_time", "schedule_history",
    "stats_pool_config", "edge_method", "job_clients",
)
JOB_META_IGNORED_KEYS = ("byoc",)
JOB_META_KEYS = frozenset(JOB_META_LAUNCH_KEYS + JOB_META_INFO_KEYS + JOB_META_IGNORED_KEYS)


class StrictCharField(serializers.CharField):
    """A string and only a string, taken as sent: DRF's CharField would turn 12 into "12" and trim
    " x " to "x" (and check max_length after trimming), so the schema's patterns and lengths would
    not be what the API checks."""

    def __init__(self, **kwargs):
        kwargs.setdefault("trim_whitespace", False)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


def pattern(regex: str, message: str) -> RegexValidator:
    return RegexValidator(regex, message)


SITE_NAME = pattern(SITE_NAME_PATTERN, "1-63 letters, digits, '.', '_' or '-', starting with a letter or digit.")
NAME = pattern(NAME_PATTERN, f"Invalid name: {nvflare.NAME_RULE}.")
JOB_ID = pattern(JOB_ID_PATTERN, "1-128 letters, digits, '.', '_' or '-', starting with a letter or digit.")
ABSOLUTE_PATH = pattern(r"^/", "Must be an absolute path.")
# --set items as NVFlare's parent passes them (nvflare.check_set_options): key=value, the key not
# starting with '-' or '=', no NUL or line breaks.
SET_OPTION = pattern(r"^[^\-=\x00\r\n][^=\x00\r\n]*=[^\x00\r\n]*$",
                     "Must be 'key=value' with a key not starting with '-', without NUL or line breaks.")


class StrictSerializer(serializers.Serializer):
    """Unknown fields are refused (400 naming the field), never ignored; the schema says
    `additionalProperties: false` (jobs.api.schema.ApiAutoSchema)."""

    refuse_unknown_fields = True

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError({sorted(unknown)[0]: ["Unknown field."]})
        return super().to_internal_value(data)


class JobProgressSerializer(serializers.Serializer):
    """Federated training progress read from the job's own output (an FL server job's rounds and
    aggregations; a client job's round); null until the output shows any. Times are when the
    launcher saw the line."""

    round = serializers.IntegerField(allow_null=True, min_value=0, help_text=(
        "The round in progress as NVFlare numbers it (0 for the first)."))
    total_rounds = serializers.IntegerField(allow_null=True, min_value=1, help_text=(
        "How many rounds the job runs (its output or its deployed server config); null when unknown."))
    aggregation_round = serializers.IntegerField(allow_null=True, min_value=0, help_text=(
        "The round of the last aggregation seen."))
    aggregated_updates = serializers.IntegerField(allow_null=True, min_value=0, help_text=(
        "How many client updates the last aggregation took in, when the output says."))
    finished = serializers.BooleanField(help_text="The workflow said it finished training.")
    last_aggregation_at = serializers.DateTimeField(allow_null=True)
    updated_at = serializers.DateTimeField(allow_null=True)


class JobUsageSerializer(serializers.Serializer):
    """The latest resource sample of a running job (every LAUNCHER_RESOURCE_SAMPLE_SECONDS) and what
    it requested; null before the first sample. Kubernetes: requests and limits only."""

    available = serializers.BooleanField(help_text="False when the backend has no usage metrics (Kubernetes).")
    cpu_cores = serializers.FloatField(allow_null=True, help_text="CPU cores used since the previous sample.")
    memory_bytes = serializers.IntegerField(allow_null=True, help_text="Memory in use (RSS; page cache excluded).")
    memory_limit_bytes = serializers.IntegerField(allow_null=True)
    cpu_limit_cores = serializers.FloatField(allow_null=True)
    gpus_requested = serializers.IntegerField(allow_null=True)
    sampled_at = serializers.DateTimeField(allow_null=True)
    cost_ms = serializers.FloatField(allow_null=True, help_text="How long the sample took to read.")
    note = serializers.CharField(allow_null=True, allow_blank=True)


# The job payload (jobs.payloads) as the schema declares it: the fields are declared here, for
# drf-spectacular; the output is job_payload's, which every other reader of a job gets too (websocket
# pushes, the long poll, resume). (Comments, not docstrings: a docstring is the schema's description.)
class JobSerializer(serializers.ModelSerializer):
    site = serializers.SlugRelatedField(slug_field="name", read_only=True)
    url = serializers.SerializerMethodField()
    progress = JobProgressSerializer(read_only=True, allow_null=True)
    usage = JobUsageSerializer(read_only=True, allow_null=True)

    class Meta:
        model = Job
        fields = list(JOB_FIELDS)
        read_only_fields = fields

    def get_url(self, job: Job) -> str:
        return job_url(job.pk)

    def to_representation(self, instance: Job) -> dict:
        return job_payload(instance)


class JobDetailSerializer(JobSerializer):
    """One job with what was asked (credentials were never stored) and the spec as launched (redacted)."""

    class Meta(JobSerializer.Meta):
        fields = list(JOB_DETAIL_FIELDS)
        read_only_fields = fields

    def to_representation(self, instance: Job) -> dict:
        return job_detail_payload(instance, spec=True)


class JobSubmitterDetailSerializer(JobSerializer):
    """One job as a site token (the FL parent) sees it: what it asked, not the spec as launched,
    which carries the site's configuration (study env values, host paths, mounts)."""

    class Meta(JobSerializer.Meta):
        fields = list(JOB_SUBMITTER_DETAIL_FIELDS)
        read_only_fields = fields

    def to_representation(self, instance: Job) -> dict:
        return job_detail_payload(instance, spec=False)


@extend_schema_serializer(component_name="JobDetail")
class JobDetailSchemaSerializer(JobSubmitterDetailSerializer):
    """Documentation only: GET /jobs/{id}/ as users see it (JobDetailSerializer) and as site
    tokens do (JobSubmitterDetailSerializer): the same, but `spec` only for users."""

    spec = serializers.JSONField(required=False, allow_null=True, help_text=(
        "The launch spec as the backend prepared it (credentials redacted); not shown to site tokens."))

    class Meta(JobSubmitterDetailSerializer.Meta):
        fields = [*JobSubmitterDetailSerializer.Meta.fields, "spec"]
        read_only_fields = [f for f in fields if f != "spec"]


_ANY: dict = {}
JOB_META_SCHEMA = {
    "type": "object",
    "description": "NVFlare's job meta (JobMetaKey). Only `job_id` (must equal the job's), `study`, `resource_spec` "
                   "and `launcher_spec` affect the launch; `byoc` is accepted and ignored; other keys are refused.",
    "properties": {
        "job_id": {"type": "string", "description": "Must equal `job_id`."},
        "study": {"type": "string", "nullable": True, "pattern": optional(NAME_PATTERN), "maxLength": 63},
        "resource_spec": {"type": "object", "nullable": True, "additionalProperties": {}},
        "launcher_spec": {"type": "object", "nullable": True, "additionalProperties": {}},
        **{key: _ANY for key in (*JOB_META_INFO_KEYS, *JOB_META_IGNORED_KEYS)},
    },
    "additionalProperties": False,
}
_PAIR = {"type": "array", "minItems": 2, "maxItems": 2, "description": "[flag, value]",
         "items": {"oneOf": [{"type": "string", "nullable": True}, {"type": "number"}]}}
JOB_ARGS_SCHEMA = {
    "type": "object",
    "description": "JOB_PROCESS_ARGS as NVFlare's parent builds them: name -> [flag, value]. Arguments rendered "
                   "on the command line must carry NVFlare's flag for the role and a value not starting with '-'; "
                   "exe_module is ['-m', <module>]; credentials (auth_token, auth_signature, ssid) reach the job "
                   "only through its environment and are never stored. Kubernetes sites only: "
                   "workspace_transfer_token and workspace_owner_fqcn (['', value]), the FL parent's "
                   "WorkspaceTransferManager registration of the job, kept like the credentials.",
    "properties": {
        "exe_module": {"type": "array", "minItems": 2, "maxItems": 2, "description": "['-m', <dotted module name>]",
                       "items": {"type": "string", "minLength": 1, "maxLength": nvflare.MODULE_MAX_LENGTH}},
        **{name: _PAIR for name in sorted(nvflare.KNOWN_ARGS - {"exe_module"})},
    },
    "required": ["exe_module"],
    "additionalProperties": False,
}


@extend_schema_field(JOB_META_SCHEMA)
class JobMetaField(serializers.DictField):
    pass


@extend_schema_field(JOB_ARGS_SCHEMA)
class JobArgsField(serializers.DictField):
    pass


def _arg_value_ok(value) -> bool:
    return value is None or isinstance(value, (str, int, float)) and not isinstance(value, bool)


class JobSubmitSerializer(StrictSerializer):
    """The shapes the schema declares, all checked here (errors named like the services' own:
    `job_meta.study`, `job_args.workspace`); the NVFlare rules are the services'
    (jobs.services.submission, backends.nvflare.normalise_job_args)."""

    site = StrictCharField(max_length=63, validators=[SITE_NAME])
    job_id = StrictCharField(max_length=128, validators=[JOB_ID])
    role = serializers.ChoiceField(choices=JobRole.choices, default=JobRole.CLIENT)
    job_meta = JobMetaField(required=False, default=dict)
    job_args = JobArgsField()
    set_options = serializers.ListField(child=StrictCharField(max_length=1000, validators=[SET_OPTION]),
                                        required=False, default=list, max_length=200)

    def validate_job_meta(self, meta: dict) -> dict:
        for key in meta:
            if key not in JOB_META_KEYS:
                raise serializers.ValidationError(
                    f"unknown job_meta key {key!r}; allowed: {', '.join(sorted(JOB_META_KEYS))}")
        return meta

    def validate(self, data: dict) -> dict:
        meta, args = data.get("job_meta") or {}, data["job_args"]
        errors: dict[str, list[str]] = {}
        study = meta.get("study")
        if study not in (None, "") and not (isinstance(study, str) and nvflare.NAME_RE.fullmatch(study)):
            errors["job_meta.study"] = [f"Must be a study name ({nvflare.NAME_RULE}), empty or null."]
        if "job_id" in meta and meta["job_id"] != data["job_id"]:
            errors["job_meta.job_id"] = ["Must equal job_id."]
        for key in ("resource_spec", "launcher_spec"):
            if meta.get(key) is not None and not isinstance(meta[key], dict):
                errors[f"job_meta.{key}"] = ["Must be a mapping."]
        for name, pair in args.items():
            if name not in nvflare.KNOWN_ARGS:
                errors[f"job_args.{name}"] = [
                    f"Unknown job process arg; expected one of {', '.join(sorted(nvflare.KNOWN_ARGS))}."]
            elif not isinstance(pair, list) or len(pair) != 2 or not all(_arg_value_ok(v) for v in pair):
                errors[f"job_args.{name}"] = ["Must be a [flag, value] pair of strings, numbers or null."]
        module = args.get("exe_module")
        if module is None:
            errors["job_args.exe_module"] = ["JOB_PROCESS_ARGS must name the module to run (exe_module)."]
        elif "job_args.exe_module" not in errors and not all(
                isinstance(v, str) and 1 <= len(v) <= nvflare.MODULE_MAX_LENGTH for v in module):
            errors["job_args.exe_module"] = ["Must be ['-m', <dotted module name>]."]
        if errors:
            raise serializers.ValidationError(errors)
        return data


class JobEventSerializer(serializers.ModelSerializer):
    seq = serializers.IntegerField(source="id", read_only=True)

    class Meta:
        model = JobEvent
        fields = ["seq", "at", "from_state", "to_state", "message", "source"]
        read_only_fields = fields


class JobLogsSerializer(serializers.Serializer):
    job = serializers.IntegerField()
    source = serializers.ChoiceField(choices=["saved", "live", "none"])
    tail = serializers.IntegerField()
    logs = serializers.CharField(allow_blank=True)


CHECK_DETAIL_MAX = 200  # a check's detail may quote an engine's answer: never echo it at length


def short_detail(text: str) -> str:
    text = str(text or "")
    return text if len(text) <= CHECK_DETAIL_MAX else text[:CHECK_DETAIL_MAX - 1] + "…"


class CheckResultSerializer(serializers.Serializer):
    name = serializers.CharField()
    ok = serializers.BooleanField()
    detail = serializers.SerializerMethodField()

    def get_detail(self, result) -> str:
        return short_detail(getattr(result, "detail", None) if not isinstance(result, dict) else result.get("detail"))


class SiteTestInputSerializer(StrictSerializer):
    """Docker only: which datasets to check (default: all of the site's datasets)."""

    class DatasetSpecSerializer(StrictSerializer):
        study = StrictCharField(max_length=63, validators=[NAME])
        name = StrictCharField(max_length=63, validators=[NAME])
        source = StrictCharField(max_length=1024)
        mode = serializers.ChoiceField(choices=DatasetMode.choices, default=DatasetMode.RO)

    datasets = DatasetSpecSerializer(many=True, required=False)


class DatasetSerializer(serializers.ModelSerializer):
    mount_path = serializers.CharField(read_only=True)

    class Meta:
        model = Dataset
        fields = ["name", "source", "mode", "mount_path"]
        read_only_fields = ["mount_path"]


class DatasetInputSerializer(StrictSerializer):
    name = StrictCharField(max_length=63, validators=[NAME])
    source = StrictCharField(max_length=1024)
    mode = serializers.ChoiceField(choices=DatasetMode.choices, default=DatasetMode.RO)


class StudySerializer(serializers.ModelSerializer):
    datasets = DatasetSerializer(many=True, read_only=True)

    class Meta:
        model = Study
        fields = ["name", "description", "image", "env", "docker_kwargs", "pod_template", "datasets", "created_at"]
        read_only_fields = fields


class StudyInputSerializer(StrictSerializer):
    name = StrictCharField(max_length=63, validators=[NAME])
    description = StrictCharField(max_length=200, allow_blank=True, required=False)
    image = StrictCharField(max_length=255, allow_blank=True, required=False)
    env = serializers.DictField(required=False)
    docker_kwargs = serializers.DictField(required=False)
    pod_template = serializers.DictField(required=False, allow_null=True)


class SiteSerializer(serializers.ModelSerializer):
    role = serializers.SerializerMethodField()

    class Meta:
        model = Site
        fields = ["name", "backend", "allowed_data_roots", "docker", "kubernetes", "process", "role",
                  "created_at", "updated_at"]
        read_only_fields = fields

    def get_role(self, site: Site) -> str | None:
        from jobs.selectors import site_role

        request = self.context.get("request")
        return site_role(request.user, site) if request is not None else None


def _settings_field(kind: str) -> type[serializers.DictField]:
    """A backend's settings block: its keys are the backend config's (unknown ones are refused);
    the values are checked by the backend (errors name them: `docker.network`)."""
    names = sorted(config_class(kind).__dataclass_fields__)
    schema = {"type": "object", "properties": {name: _ANY for name in names}, "additionalProperties": False,
              "description": f"The {kind} backend's settings (see the README's Backends section). Some may "
                             "only be changed by staff (403 for others)."}
    return extend_schema_field(schema)(type(f"{kind.title()}SettingsField", (serializers.DictField,), {}))


class SiteInputSerializer(StrictSerializer):
    name = StrictCharField(max_length=63, validators=[SITE_NAME])
    backend = serializers.ChoiceField(choices=Backend.choices, default=Backend.PROCESS)
    allowed_data_roots = serializers.ListField(child=StrictCharField(max_length=1024, validators=[ABSOLUTE_PATH]),
                                               required=False)
    docker = _settings_field("docker")(required=False)
    kubernetes = _settings_field("kubernetes")(required=False)
    process = _settings_field("process")(required=False)


class AuditEntrySerializer(serializers.ModelSerializer):
    class Meta:
        model = AuditEntry
        fields = ["at", "actor", "action", "target", "detail", "remote_addr"]
        read_only_fields = fields


def reject_unknown(serializer_class, data) -> None:
    """Unknown body fields are refused (400 naming the field), never ignored."""
    if isinstance(data, dict):
        unknown = set(data) - set(serializer_class().fields)
        if unknown:
            raise serializers.ValidationError({sorted(unknown)[0]: ["Unknown field."]})
