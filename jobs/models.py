"""Data and invariants only. Behaviour lives in jobs/services/; jobs and their events are written
only by jobs.services.lifecycle (job_create, job_observe, job_note)."""

from __future__ import annotations

from django.conf import settings
from django.core.validators import RegexValidator
from django.db import models
from django.db.models import Q

from backends.base import TERMINAL_STATES, JobState
from backends.nvflare import NAME_RE, NAME_RULE

SITE_NAME_RE = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$"
name_validator = RegexValidator(NAME_RE.pattern, f"Invalid name: {NAME_RULE}.")
site_name_validator = RegexValidator(
    SITE_NAME_RE, "Invalid site name: 1-63 letters, digits, '.', '_' or '-', starting with a letter or digit."
)


class Backend(models.TextChoices):
    DOCKER = "docker"
    KUBERNETES = "kubernetes"
    PROCESS = "process"


class Site(models.Model):
    """One NVFlare site (the FL parent's identity name) and how its jobs are launched."""

    name = models.CharField(max_length=63, unique=True, validators=[site_name_validator])
    backend = models.CharField(max_length=16, choices=Backend.choices, default=Backend.PROCESS)
    # Per-backend settings, mirroring NVFlare's launcher arguments; parsed by backends.<kind>.<Kind>SiteConfig.
    process = models.JSONField(default=dict, blank=True)
    docker = models.JSONField(default=dict, blank=True)
    kubernetes = models.JSONField(default=dict, blank=True)
    allowed_data_roots = models.JSONField(default=list, blank=True, help_text="Host directories dataset sources must lie under.")
    members = models.ManyToManyField(settings.AUTH_USER_MODEL, through="SiteMembership", related_name="sites", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.CheckConstraint(condition=Q(backend__in=Backend.values), name="site_backend_valid"),
            models.CheckConstraint(condition=Q(name__regex=SITE_NAME_RE), name="site_name_valid"),
        ]

    def __str__(self) -> str:
        return self.name

    @property
    def backend_settings(self) -> dict:
        return getattr(self, self.backend) or {}


class Role(models.TextChoices):
    VIEWER = "viewer"  # sees the site and its jobs
    OPERATOR = "operator"  # also launches and terminates jobs
    ADMIN = "admin"  # also changes the site, its studies and datasets


class SiteMembership(models.Model):
    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=16, choices=Role.choices, default=Role.VIEWER)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["site", "user"], name="membership_unique"),
            models.CheckConstraint(condition=Q(role__in=Role.values), name="membership_role_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.user} is {self.role} of {self.site}"


class Study(models.Model):
    """A study of one site (NVFlare's study_runtime entry): its datasets and container settings."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="studies")
    name = models.CharField(max_length=63, validators=[name_validator])
    description = models.CharField(max_length=200, blank=True)
    image = models.CharField(max_length=255, blank=True, help_text="container.image used when a job names none.")
    env = models.JSONField(default=dict, blank=True)
    docker_kwargs = models.JSONField(default=dict, blank=True)
    pod_template = models.JSONField(null=True, blank=True)
    # References to secrets, never their values (jobs.services.study_secrets has the shapes).
    secret_env = models.JSONField(default=dict, blank=True, help_text="NAME -> {source, key}.")
    secret_mounts = models.JSONField(default=dict, blank=True, help_text="name -> {source, mount_path, mode, items}.")
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        verbose_name_plural = "studies"
        constraints = [
            models.UniqueConstraint(fields=["site", "name"], name="study_unique_per_site"),
            models.CheckConstraint(condition=Q(name__regex=NAME_RE.pattern), name="study_name_valid"),
        ]

    def __str__(self) -> str:
        return f"{self.site.name}/{self.name}"


class DatasetMode(models.TextChoices):
    RO = "ro", "read-only"
    RW = "rw", "read-write"


class Dataset(models.Model):
    """Mounted into the study's jobs at /data/<study>/<dataset>."""

    study = models.ForeignKey(Study, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=63, validators=[name_validator])
    source = models.CharField(max_length=1024, help_text="Host path (Docker/process) or PVC claim name (Kubernetes).")
    mode = models.CharField(max_length=2, choices=DatasetMode.choices, default=DatasetMode.RO)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["study", "name"], name="dataset_unique_per_study"),
            models.CheckConstraint(condition=Q(mode__in=DatasetMode.values), name="dataset_mode_valid"),
            models.CheckConstraint(condition=Q(name__regex=NAME_RE.pattern), name="dataset_name_valid"),
            models.CheckConstraint(condition=~Q(source=""), name="dataset_source_required"),
        ]

    def __str__(self) -> str:
        return f"{self.study}/{self.name}"

    @property
    def mount_path(self) -> str:
        return f"/data/{self.study.name}/{self.name}"


State = models.TextChoices("State", [(s.name, s.value) for s in JobState])
TERMINAL = [s.value for s in TERMINAL_STATES]
ACTIVE = [s.value for s in JobState if s not in TERMINAL_STATES]


class JobRole(models.TextChoices):
    CLIENT = "client"
    SERVER = "server"


class Job(models.Model):
    """One NVFlare job on one site, from submission to its final state."""

    site = models.ForeignKey(Site, on_delete=models.PROTECT, related_name="jobs")
    job_id = models.CharField(max_length=128)
    role = models.CharField(max_length=8, choices=JobRole.choices, default=JobRole.CLIENT)
    study = models.CharField(max_length=63, blank=True)
    image = models.CharField(max_length=255, blank=True)
    backend = models.CharField(max_length=16, choices=Backend.choices)
    # The container/pod/process name the backend derives from the job id (case-folded, characters
    # replaced): two job ids that map to one name would share one workload, so it is unique per site.
    workload = models.CharField(max_length=255, null=True, blank=True)
    handle = models.JSONField(null=True, blank=True)
    state = models.CharField(max_length=16, choices=State.choices, default=JobState.QUEUED.value)
    return_code = models.IntegerField(null=True, blank=True)
    exit_code = models.IntegerField(null=True, blank=True, help_text="The engine's raw exit code.")
    reason = models.CharField(max_length=200, blank=True, help_text="Why it ended or is stuck, e.g. OOMKilled.")
    detail = models.TextField(blank=True)
    logs_tail = models.TextField(blank=True)
    # What was asked (credentials removed) and the spec as launched (credentials redacted).
    job_meta = models.JSONField(default=dict, blank=True)
    job_args = models.JSONField(default=dict, blank=True)
    set_options = models.JSONField(default=list, blank=True)
    spec = models.JSONField(null=True, blank=True)
    # The launch request as built at submit (jobs.services.requests): credentials and study data
    # excluded, both supplied again at launch. None for jobs recorded before it was kept.
    request = models.JSONField(null=True, blank=True, editable=False)
    # Federated training progress read from the job's own output (jobs.services.progress): round,
    # total_rounds, last aggregation... None until the output shows any.
    progress = models.JSONField(null=True, blank=True, editable=False)
    # The latest resource sample of the running job (jobs.services.usage): CPU, memory, GPUs requested.
    usage = models.JSONField(null=True, blank=True, editable=False)
    submitted_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    submitted_by_token = models.ForeignKey("ApiToken", null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # When the engine says the workload ended (its own clock), kept beside finished_at (when it was
    # recorded and published) for the exit -> publish latency of /metrics. NULL: no engine time.
    exited_at = models.DateTimeField(null=True, blank=True, editable=False)
    # Set when someone asks to terminate: an exit observed afterwards counts as aborted (9).
    terminate_requested_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["site", "job_id"], name="job_unique_per_site"),
            models.UniqueConstraint(fields=["site", "workload"], name="job_workload_unique_per_site"),
            models.CheckConstraint(condition=Q(state__in=[s.value for s in JobState]), name="job_state_valid"),
            models.CheckConstraint(condition=Q(role__in=JobRole.values), name="job_role_valid"),
            models.CheckConstraint(condition=Q(backend__in=Backend.values), name="job_backend_valid"),
        ]
        indexes = [
            models.Index(fields=["site", "-id"], name="job_site_newest"),
            models.Index(fields=["site", "state", "-id"], name="job_site_state_newest"),
            models.Index(fields=["state", "-id"], name="job_state_newest"),
            models.Index(fields=["site", "study", "-id"], name="job_site_study_newest"),
            models.Index(fields=["site", "finished_at"], name="job_site_finished"),  # history, retention
        ]

    def __str__(self) -> str:
        return f"{self.site_id}:{self.job_id}"

    @property
    def is_terminal(self) -> bool:
        return self.state in TERMINAL

    @property
    def display_name(self) -> str:
        """job_meta.name when it is a non-empty string, else the NVFlare job id."""
        name = self.job_meta.get("name") if isinstance(self.job_meta, dict) else None
        return name.strip() if isinstance(name, str) and name.strip() else self.job_id

    @property
    def submitter_label(self) -> str:
        """Who submitted: the user's name, "site token <name>" for the FL server's token, or
        "token <name>" for a user's token (select_related them to list many)."""
        if self.submitted_by_id and self.submitted_by is not None:
            return self.submitted_by.get_username()
        token = self.submitted_by_token if self.submitted_by_token_id else None
        if token is not None:
            label = token.name or token.prefix
            return f"site token {label}" if token.site_id else f"token {label}"
        return ""


class EventSource(models.TextChoices):
    API = "api"
    WORKER = "worker"
    WATCHER = "watcher"
    RECONCILE = "reconcile"
    ADMIN = "admin"


class JobEvent(models.Model):
    """One change (or note) on a job's timeline. The id is the sequence number browsers resume from."""

    job = models.ForeignKey(Job, on_delete=models.CASCADE, related_name="events")
    at = models.DateTimeField(auto_now_add=True)
    from_state = models.CharField(max_length=16, blank=True)
    to_state = models.CharField(max_length=16)
    message = models.TextField(blank=True)
    source = models.CharField(max_length=16, choices=EventSource.choices)

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["job", "id"], name="jobevent_job_seq")]
        constraints = [models.CheckConstraint(condition=Q(source__in=EventSource.values), name="jobevent_source_valid")]


class ApiToken(models.Model):
    """A bearer token for a site (the FL server) or a user. Only a hash is stored."""

    name = models.CharField(max_length=100, blank=True)
    prefix = models.CharField(max_length=12, db_index=True, help_text="First characters, to tell tokens apart.")
    key_hash = models.CharField(max_length=64, unique=True)
    site = models.ForeignKey(Site, null=True, blank=True, on_delete=models.CASCADE, related_name="tokens")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.CASCADE, related_name="api_tokens")
    created_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    created_at = models.DateTimeField(auto_now_add=True)
    last_used_at = models.DateTimeField(null=True, blank=True)
    revoked_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at"]
        constraints = [
            models.CheckConstraint(
                condition=(Q(site__isnull=False) & Q(user__isnull=True)) | (Q(site__isnull=True) & Q(user__isnull=False)),
                name="token_belongs_to_site_or_user",
            )
        ]

    def __str__(self) -> str:
        owner = f"site {self.site}" if self.site_id else f"user {self.user}"
        return f"{self.prefix}… ({owner})"


class AuditEntry(models.Model):
    """Who changed what through the API or the dashboard, when and from where."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    user = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    token = models.ForeignKey(ApiToken, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    actor = models.CharField(max_length=200)
    action = models.CharField(max_length=64)
    target = models.CharField(max_length=300)
    detail = models.JSONField(default=dict, blank=True)
    remote_addr = models.CharField(max_length=64, blank=True)
    # The site the change was made on or within (set by jobs.services.audit), so a site admin's
    # audit page can show theirs. Kept (NULL) when the site is deleted: the entry outlives it.
    site = models.ForeignKey("Site", null=True, blank=True, on_delete=models.SET_NULL, related_name="+", db_index=True)

    class Meta:
        ordering = ["-at"]
        verbose_name_plural = "audit entries"


class OrphanWorkload(models.Model):
    """A container/pod/process carrying our labels that no job record claims. Shown, never deleted."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="orphans")
    ref = models.CharField(max_length=255)
    state = models.CharField(max_length=16)
    detail = models.TextField(blank=True)
    first_seen = models.DateTimeField(auto_now_add=True)
    last_seen = models.DateTimeField(auto_now=True)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["site", "ref"], name="orphan_unique")]


class WatcherLease(models.Model):
    """Only the holder of a site's unexpired lease runs that site's watcher."""

    site = models.OneToOneField(Site, on_delete=models.CASCADE, related_name="watcher_lease")
    owner = models.CharField(max_length=200)
    expires_at = models.DateTimeField()


class SiteHealth(models.Model):
    """What the watcher and reconcile last saw of a site's engine (jobs.services.site_health writes it)."""

    site = models.OneToOneField(Site, on_delete=models.CASCADE, related_name="health")
    watcher_connected_at = models.DateTimeField(null=True, blank=True)  # NULL while disconnected
    watcher_error = models.TextField(blank=True)
    watcher_error_at = models.DateTimeField(null=True, blank=True)
    reconciled_at = models.DateTimeField(null=True, blank=True)
    reconcile_ok = models.BooleanField(null=True)
    reconcile_summary = models.TextField(blank=True)  # what it repaired, or why it failed


class Webhook(models.Model):
    """Where a site's notifications go (jobs.services.notifications). Only platform staff set the URL:
    it makes the launcher send requests from inside the site's network (docs/security.md)."""

    site = models.ForeignKey(Site, on_delete=models.CASCADE, related_name="webhooks")
    url = models.URLField(max_length=500, blank=True)  # empty for an email recipient
    email = models.EmailField(max_length=254, blank=True)  # set: the notifications go by email (LAUNCHER_EMAIL_HOST)
    events = models.JSONField(default=list)  # a subset of jobs.services.notifications.EVENTS
    active = models.BooleanField(default=True)
    secret = models.CharField(max_length=100)  # the HMAC-SHA256 key of the signature header
    created_at = models.DateTimeField(auto_now_add=True)

    @property
    def target(self) -> str:
        """Where it goes, as shown on the Notifications page."""
        return f"mailto:{self.email}" if self.email else self.url


class WebhookDelivery(models.Model):
    """One attempt to deliver one notification (status_code NULL: no HTTP answer, see error)."""

    webhook = models.ForeignKey(Webhook, on_delete=models.CASCADE, related_name="deliveries")
    event = models.CharField(max_length=40)
    status_code = models.IntegerField(null=True, blank=True)
    error = models.TextField(blank=True)
    attempt = models.PositiveIntegerField(default=1)
    created_at = models.DateTimeField(auto_now_add=True, db_index=True)

    class Meta:
        ordering = ["-id"]


class JobLog(models.Model):
    """The whole output of a job, saved when it ended (jobs.services.job_logs), at most
    LAUNCHER_LOGS_KEEP_BYTES: a longer output keeps its start and its end. Database text, so it
    works in every layout (compose and Kubernetes share no disk); pruned with the job's events."""

    job = models.OneToOneField(Job, on_delete=models.CASCADE, primary_key=True, related_name="full_log")
    text = models.TextField()
    size = models.BigIntegerField(default=0)  # bytes the job printed
    cut = models.BigIntegerField(default=0)  # bytes left out in the middle
    saved_at = models.DateTimeField(auto_now=True)


# Runtime facts for /metrics, in their own module (jobs.runtime_models); imported to register them.
from jobs.runtime_models import BackendErrorCount, ProcessGauge, ReconcileStats  # noqa: E402, F401
