"""API input and output shapes. JobSerializer is also the websocket payload (jobs.events).

Input serializers only check shapes and types (so a wrong type is a 400 naming the field); the
rules live in the services they feed (jobs.services.catalog / submission)."""

from __future__ import annotations

from rest_framework import serializers

from jobs.models import AuditEntry, Backend, Dataset, DatasetMode, Job, JobEvent, JobRole, Site, Study

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
    """A string and only a string: DRF's CharField would turn 12 into "12"."""

    def to_internal_value(self, data):
        if not isinstance(data, str):
            self.fail("invalid")
        return super().to_internal_value(data)


class JobSerializer(serializers.ModelSerializer):
    site = serializers.SlugRelatedField(slug_field="name", read_only=True)
    url = serializers.SerializerMethodField()

    class Meta:
        model = Job
        fields = [
            "id", "site", "job_id", "role", "study", "backend", "image", "handle", "state",
            "return_code", "exit_code", "reason", "detail", "created_at", "started_at",
            "finished_at", "url",
        ]
        read_only_fields = fields

    def get_url(self, job: Job) -> str:
        return f"/api/v1/jobs/{job.pk}/"

    @property
    def _readable_fields(self):
        # Building a ModelSerializer's fields (model introspection, deep copies) is two thirds of
        # serialising a job, which happens for every answer and every push. These fields are
        # read-only and keep nothing per instance, so one set per class, bound to a first instance
        # of it, serves them all (a subclass builds its own).
        cls = type(self)
        fields = cls.__dict__.get("_shared_fields")
        if fields is None:
            fields = [field for field in cls().fields.values() if not field.write_only]
            cls._shared_fields = fields
        return fields


class JobDetailSerializer(JobSerializer):
    """One job with what was asked (credentials were never stored) and the spec as launched (redacted)."""

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "job_meta", "job_args", "set_options", "spec", "updated_at"]
        read_only_fields = fields


class JobSubmitterDetailSerializer(JobSerializer):
    """One job as a site token (the FL parent) sees it: what it asked, not the spec as launched,
    which carries the site's configuration (study env values, host paths, mounts)."""

    class Meta(JobSerializer.Meta):
        fields = [*JobSerializer.Meta.fields, "job_meta", "job_args", "set_options", "updated_at"]
        read_only_fields = fields


class JobSubmitSerializer(serializers.Serializer):
    site = StrictCharField(max_length=63)
    job_id = StrictCharField(max_length=128)
    role = serializers.ChoiceField(choices=JobRole.choices, default=JobRole.CLIENT)
    job_meta = serializers.DictField(required=False, default=dict)
    job_args = serializers.DictField()  # name -> [flag, value]; checked by backends.nvflare.normalise_job_args
    set_options = serializers.ListField(child=StrictCharField(max_length=1000, trim_whitespace=False),
                                        required=False, default=list, max_length=200)

    def validate_job_meta(self, meta: dict) -> dict:
        for key in meta:
            if key not in JOB_META_KEYS:
                raise serializers.ValidationError(
                    f"unknown job_meta key {key!r}; allowed: {', '.join(sorted(JOB_META_KEYS))}")
        return meta

    def to_internal_value(self, data):
        if isinstance(data, dict):
            unknown = set(data) - set(self.fields)
            if unknown:
                raise serializers.ValidationError({sorted(unknown)[0]: ["Unknown field."]})
        return super().to_internal_value(data)


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


class SiteTestInputSerializer(serializers.Serializer):
    """Docker only: which datasets to check (default: all of the site's datasets)."""

    class DatasetSpecSerializer(serializers.Serializer):
        study = StrictCharField(max_length=63)
        name = StrictCharField(max_length=63)
        source = StrictCharField(max_length=1024)
        mode = serializers.ChoiceField(choices=DatasetMode.choices, default=DatasetMode.RO)

    datasets = DatasetSpecSerializer(many=True, required=False)


class DatasetSerializer(serializers.ModelSerializer):
    mount_path = serializers.CharField(read_only=True)

    class Meta:
        model = Dataset
        fields = ["name", "source", "mode", "mount_path"]
        read_only_fields = ["mount_path"]


class DatasetInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=63)
    source = StrictCharField(max_length=1024)
    mode = serializers.ChoiceField(choices=DatasetMode.choices, default=DatasetMode.RO)


class StudySerializer(serializers.ModelSerializer):
    datasets = DatasetSerializer(many=True, read_only=True)

    class Meta:
        model = Study
        fields = ["name", "description", "image", "env", "docker_kwargs", "pod_template", "datasets", "created_at"]
        read_only_fields = fields


class StudyInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=63)
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


class SiteInputSerializer(serializers.Serializer):
    name = StrictCharField(max_length=63)
    backend = serializers.ChoiceField(choices=Backend.choices, default=Backend.PROCESS)
    allowed_data_roots = serializers.ListField(child=StrictCharField(max_length=1024), required=False)
    docker = serializers.DictField(required=False)
    kubernetes = serializers.DictField(required=False)
    process = serializers.DictField(required=False)


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
