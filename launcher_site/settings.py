"""The only settings module. Everything comes from the environment (see .env.example); with nothing
set, the embedded default runs on SQLite under var/ and an in-process channel layer and worker."""

import ipaddress
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from launcher_site.env import env_bool, env_int, env_list, env_str, persistent_secret_key

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("LAUNCHER_VAR_DIR", str(BASE_DIR / "var")))

DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY") or persistent_secret_key(VAR_DIR)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]"])
CSRF_TRUSTED_ORIGINS = env_list("LAUNCHER_CSRF_TRUSTED_ORIGINS", [])
HOST = env_str("HOST", "127.0.0.1")
PORT = env_int("PORT", 8000, minimum=1, maximum=65535)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",  # Swagger UI / ReDoc assets served locally: /api/docs/ works offline
    "channels",
    "jobs",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "jobs.middleware.ContentSecurityPolicyMiddleware",
]

ROOT_URLCONF = "launcher_site.urls"
ASGI_APPLICATION = "launcher_site.asgi.application"
WSGI_APPLICATION = None

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

# --- Database: DATABASE_URL, else SQLite under var/ ---------------------------------------------
DATABASE_URL = env_str("DATABASE_URL")
if DATABASE_URL:
    try:
        _db = dj_database_url.parse(DATABASE_URL)
    except Exception as exc:  # dj-database-url raises several types for a bad URL
        raise ImproperlyConfigured(f"DATABASE_URL: cannot parse {DATABASE_URL.split('@')[-1]!r}: {exc}") from None
    if _db.get("ENGINE") not in ("django.db.backends.postgresql", "django.db.backends.sqlite3"):
        raise ImproperlyConfigured(f"DATABASE_URL: unsupported database engine {_db.get('ENGINE')!r}; use postgres:// or sqlite://")
else:
    VAR_DIR.mkdir(parents=True, exist_ok=True)
    _db = {"ENGINE": "django.db.backends.sqlite3", "NAME": str(VAR_DIR / "launcher.sqlite3")}
if _db["ENGINE"] == "django.db.backends.postgresql":
    # A connection pool per process: ASGI runs sync code on many threads, and a persistent
    # connection per thread would exhaust PostgreSQL's max_connections under load.
    _db["CONN_MAX_AGE"] = 0
    # Django then has the pool check a connection (one empty query) before handing it out: after
    # PostgreSQL restarts every idle pooled connection is dead, and each would fail one request or
    # launch task (the composed-layout drill in tests/compose caught a launch lost that way).
    _db["CONN_HEALTH_CHECKS"] = True
    _pool_size = env_int("LAUNCHER_DB_POOL_SIZE", 10, minimum=1)
    _db.setdefault("OPTIONS", {})["pool"] = {
        "min_size": min(4, _pool_size),  # kept open, so a request rarely waits for a new connection
        "max_size": _pool_size,
        "timeout": 20,  # seconds a request waits for a free connection before failing
    }
if _db["ENGINE"] == "django.db.backends.sqlite3":
    _db["OPTIONS"] = {
        # WAL lets readers run beside one writer; IMMEDIATE takes the write lock at BEGIN, so two
        # writers queue on the busy timeout instead of failing with "database is locked".
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
DATABASES = {"default": _db}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# --- Redis: channel layer and Celery broker, else in-process -----------------------------------
REDIS_URL = env_str("REDIS_URL")
if REDIS_URL:
    if not REDIS_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"REDIS_URL: expected redis://, rediss:// or unix://, got {REDIS_URL.split('@')[-1]!r}")
    # Pub/sub layer: each web process (event loop) holds one subscriber connection that every
    # consumer's channel and group rides on, plus one for publishing, so hundreds of sockets
    # reconnecting at once cost subscribe round trips, not connections. At-most-once; browsers resume.
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {"hosts": [{
                "address": REDIS_URL,
                "socket_connect_timeout": 3,  # a dead Redis fails a send quickly instead of hanging it
                "socket_keepalive": True,
                "health_check_interval": 10,  # notice a half-open subscriber connection and reconnect
            }]},
        }
    }
    CELERY_BROKER_URL = REDIS_URL
else:
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
    CELERY_BROKER_URL = "memory://localhost/"
    # Kombu polls the in-memory broker, every 1 s by default: that was most of a launch's latency
    # (bench/client_launch.py). Looking at an in-process queue costs next to nothing: every 10 ms
    # is 0.9% of a core idle (0.5% at 50 ms) and takes ~20 ms off a launch (bench/launch_whole_path.py).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"polling_interval": 0.01}
# With no REDIS_URL the worker runs as threads inside the web process (launcher_site.embedded).
LAUNCHER_EMBEDDED = not REDIS_URL

CELERY_TASK_ACKS_LATE = True  # safe only because launch and terminate are idempotent
CELERY_TASK_IGNORE_RESULT = True  # nothing reads task results: the job's row is the record
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_BEAT_SCHEDULE_FILENAME = str(VAR_DIR / "celerybeat-schedule")
if _db["ENGINE"] == "django.db.backends.postgresql":
    # Celery's Django fixup closes a prefork child's connections *and its pool* around every task
    # (celery#10554): each launch paid for a new pool, ~35 ms (bench/launch_whole_path.py --phases).
    # With a reuse count it leaves them (closing the pool every 2000 tasks); launcher_site.celery
    # hands the connection back to the pool around each task instead, as Django does per request.
    CELERY_DB_REUSE_MAX = 1000

# --- Auth, static, i18n -------------------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "overview"
LOGOUT_REDIRECT_URL = "login"
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATICFILES_DIRS = [BASE_DIR / "static"]
LAUNCHER_COLLECTED_STATIC = env_bool("LAUNCHER_COLLECTED_STATIC", False)
STATIC_ROOT = Path(env_str("LAUNCHER_STATIC_ROOT", str(BASE_DIR / "staticfiles")))
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"
        if LAUNCHER_COLLECTED_STATIC
        else "django.contrib.staticfiles.storage.StaticFilesStorage"
    },
}
# Production serves collectstatic's hashed, compressed files; the embedded default serves static/
# straight from the finders (and has no collected folder for WhiteNoise to warn about).
WHITENOISE_USE_FINDERS = not LAUNCHER_COLLECTED_STATIC
if not LAUNCHER_COLLECTED_STATIC and not STATIC_ROOT.is_dir():
    STATIC_ROOT = None

# --- Security headers (production values switch on with LAUNCHER_HTTPS) -------------------------
LAUNCHER_HTTPS = env_bool("LAUNCHER_HTTPS", False)
SESSION_COOKIE_SECURE = CSRF_COOKIE_SECURE = LAUNCHER_HTTPS
SECURE_HSTS_SECONDS = 31536000 if LAUNCHER_HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = LAUNCHER_HTTPS
SECURE_HSTS_PRELOAD = LAUNCHER_HTTPS
SECURE_SSL_REDIRECT = LAUNCHER_HTTPS and env_bool("LAUNCHER_SSL_REDIRECT", True)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https") if LAUNCHER_HTTPS else None
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("LAUNCHER_MAX_BODY_BYTES", 1024 * 1024, minimum=1024)

# --- REST API -----------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "jobs.api.auth.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # drf-spectacular's, plus the error responses every operation can give (jobs.api.schema).
    "DEFAULT_SCHEMA_CLASS": "jobs.api.schema.ApiAutoSchema",
    "DEFAULT_FILTER_BACKENDS": ["django_filters.rest_framework.DjangoFilterBackend"],
    "EXCEPTION_HANDLER": "jobs.api.errors.exception_handler",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "FLARE Launcher API",
    "DESCRIPTION": "Launch, watch and terminate NVIDIA FLARE jobs as containers, pods or processes.",
    "VERSION": "1",
    "SERVE_INCLUDE_SCHEMA": False,
    "SCHEMA_PATH_PREFIX": "/api/v1",  # tags `jobs`/`sites`, operation ids `jobs_create`: a generated client reads well
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# Shared by all processes when Redis is there (failed-token counts must be seen by every web process).
CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": REDIS_URL}
          if REDIS_URL else {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
          # Per process, by design: API tokens this process found valid (jobs.services.tokens).
          "tokens": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache", "LOCATION": "tokens",
                     "OPTIONS": {"MAX_ENTRIES": 1000}}}

# --- Launcher knobs -----------------------------------------------------------------------------
# How often Celery beat (or the embedded scheduler) reconciles every site against its backend.
LAUNCHER_RECONCILE_SECONDS = env_int("LAUNCHER_RECONCILE_SECONDS", 30, minimum=1)
# Failed API token attempts allowed per client address per minute, then 429.
LAUNCHER_FAILED_TOKEN_LIMIT = env_int("LAUNCHER_FAILED_TOKEN_LIMIT", 20, minimum=1)
# Failed sign-ins (dashboard and admin) allowed per username and per client address in 5 minutes,
# then that username / address is refused (429) until the window ends, right password or not.
LAUNCHER_LOGIN_FAILURE_LIMIT = env_int("LAUNCHER_LOGIN_FAILURE_LIMIT", 10, minimum=1)
# Reverse proxies (IPs or CIDRs, comma-separated) whose X-Forwarded-For / X-Forwarded-Proto are
# believed (manage.py serve). None by default: the client address is the TCP peer's.
LAUNCHER_TRUSTED_PROXIES = env_list("LAUNCHER_TRUSTED_PROXIES", [])
for _proxy in LAUNCHER_TRUSTED_PROXIES:
    try:
        ipaddress.ip_network(_proxy, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"LAUNCHER_TRUSTED_PROXIES: {_proxy!r} is not an IP address or CIDR") from None
# GET /metrics (jobs.metrics): answered to `Authorization: Bearer <token>` or to a client in the
# allowed addresses (IPs or CIDRs); with neither set it is off (404).
LAUNCHER_METRICS_TOKEN = env_str("LAUNCHER_METRICS_TOKEN")
LAUNCHER_METRICS_ALLOWED_IPS = env_list("LAUNCHER_METRICS_ALLOWED_IPS", [])
for _net in LAUNCHER_METRICS_ALLOWED_IPS:
    try:
        ipaddress.ip_network(_net, strict=False)
    except ValueError:
        raise ImproperlyConfigured(f"LAUNCHER_METRICS_ALLOWED_IPS: {_net!r} is not an IP address or CIDR") from None
# Days a finished job keeps its events and logs tail; the job row itself is kept. 0 = forever.
LAUNCHER_RETENTION_DAYS = env_int("LAUNCHER_RETENTION_DAYS", 90, minimum=0)
# Periodic work, run by Celery beat (embedded: inside the web process; production: `celery beat`).
CELERY_BEAT_SCHEDULE = {
    "reconcile-every-site": {"task": "jobs.tasks.sites_reconcile_task", "schedule": LAUNCHER_RECONCILE_SECONDS},
    "prune-finished-jobs": {"task": "jobs.tasks.jobs_prune_task", "schedule": 3600},
}
# A job still queued or starting this long after it was recorded is launched again when the FL server re-submits
# it (its first launch was lost with a dying web process or worker); sooner re-submits change nothing.
LAUNCHER_RELAUNCH_AFTER_SECONDS = env_int("LAUNCHER_RELAUNCH_AFTER_SECONDS", 5, minimum=0)
# Lines of output kept on a job when it ends.
LAUNCHER_LOGS_TAIL_LINES = env_int("LAUNCHER_LOGS_TAIL_LINES", 200, minimum=0)
# ...and at most this many bytes of it: every tail kept or served (saved, API, download, live frames).
LAUNCHER_LOGS_TAIL_BYTES = env_int("LAUNCHER_LOGS_TAIL_BYTES", 256 * 1024, minimum=4096, maximum=16 * 1024 * 1024)
# The whole output of a job is kept when it ends (jobs.services.job_logs), at most this many bytes: a longer
# output keeps its start and its end, with a line marking the cut. 0 = keep only the tail. Pruned with the job's events.
LAUNCHER_LOGS_KEEP_BYTES = env_int("LAUNCHER_LOGS_KEEP_BYTES", 8 * 1024 * 1024, minimum=0, maximum=256 * 1024 * 1024)
# The longest the server holds a long poll (GET /api/v1/jobs/{id}/wait/?timeout=S, S <= 60): a longer
# S is answered when this runs out, with the job as it is then (clients poll again).
LAUNCHER_WAIT_HOLD_SECONDS = env_int("LAUNCHER_WAIT_HOLD_SECONDS", 60, minimum=1, maximum=60)
# A site's connection test answers within this many seconds (2 run at once per process, more get "busy").
LAUNCHER_CHECK_DEADLINE_SECONDS = env_int("LAUNCHER_CHECK_DEADLINE_SECONDS", 10, minimum=1, maximum=120)
# The web process's engine calls (Test connection, a running job's logs) run on a Celery worker and
# are awaited at most LAUNCHER_CHECK_DEADLINE_SECONDS: for a web process with no Docker socket or
# kubeconfig (compose.yaml). Off: the web process calls the engine itself.
LAUNCHER_ENGINE_VIA_WORKER = env_bool("LAUNCHER_ENGINE_VIA_WORKER", False)
# Only those calls store results (every other task ignores its result); the embedded worker shares
# this process's memory.
CELERY_RESULT_BACKEND = (("redis+socket://" + REDIS_URL.removeprefix("unix://")) if REDIS_URL.startswith("unix://")
                         else REDIS_URL) if REDIS_URL else "cache+memory://"
CELERY_RESULT_EXPIRES = 600
# Where process-backend sites keep job workspaces when the site sets none.
LAUNCHER_PROCESS_WORKSPACES = Path(env_str("LAUNCHER_PROCESS_WORKSPACES", str(VAR_DIR / "workspaces")))
# Watchers take a per-site lease so only one process watches each site.
LAUNCHER_WATCHER_LEASE_SECONDS = env_int("LAUNCHER_WATCHER_LEASE_SECONDS", 15, minimum=3)
# Run watchers inside this process (the embedded default); production runs `manage.py watch`.
LAUNCHER_RUN_WATCHERS = env_bool("LAUNCHER_RUN_WATCHERS", LAUNCHER_EMBEDDED)
# --- Live state (watchers, reconcile, websockets) -----------------------------------------------
# Websocket heartbeat interval; proxies close idle sockets after ~30-60 s, browsers notice a dead server.
LAUNCHER_WS_HEARTBEAT_SECONDS = env_int("LAUNCHER_WS_HEARTBEAT_SECONDS", 20, minimum=1, maximum=25)
# A browser resuming more than this many job events behind gets one snapshot instead of each change.
# Frames a second per site (or job) group, bursts of as many; changes beyond go out batched (0: off).
LAUNCHER_WS_FRAMES_PER_SECOND = env_int("LAUNCHER_WS_FRAMES_PER_SECOND", 5, minimum=0)
LAUNCHER_WS_RESUME_MAX_EVENTS = env_int("LAUNCHER_WS_RESUME_MAX_EVENTS", 1000, minimum=1)
# Threads per watcher recording observations of different workloads in parallel (each workload's
# observations stay in order); an exit costs engine calls (logs tail, removal) and a database write.
LAUNCHER_WATCHER_LANES = env_int("LAUNCHER_WATCHER_LANES", 4, minimum=1, maximum=32)
# Running jobs whose new output lines a watcher process forwards to open job pages (0: none).
LAUNCHER_LOG_FOLLOWERS = env_int("LAUNCHER_LOG_FOLLOWERS", 20, minimum=0)
# Seconds between resource samples (CPU, memory) of each followed running job (0: off).
LAUNCHER_RESOURCE_SAMPLE_SECONDS = env_int("LAUNCHER_RESOURCE_SAMPLE_SECONDS", 10, minimum=0)
# Seconds an unacknowledged Celery task (a worker killed mid-launch) waits before redelivery.
# Must exceed the longest launch/terminate (image pulls included) and the longest retry countdown.
LAUNCHER_TASK_VISIBILITY_SECONDS = env_int("LAUNCHER_TASK_VISIBILITY_SECONDS", 300, minimum=2)
# A launch whose engine is unreachable (or answers 5xx) is retried this many times, waiting
# BACKOFF, 2*BACKOFF, 4*BACKOFF... seconds (at most 60) in between; each failed attempt is a job note.
LAUNCHER_LAUNCH_RETRIES = env_int("LAUNCHER_LAUNCH_RETRIES", 8, minimum=0, maximum=100)
LAUNCHER_LAUNCH_RETRY_BACKOFF = env_int("LAUNCHER_LAUNCH_RETRY_BACKOFF", 2, minimum=1, maximum=60)
# A webhook delivery that got no answer, a 5xx or a 429 is retried 3 times, after BACKOFF, 2*BACKOFF, 4*BACKOFF s.
LAUNCHER_WEBHOOK_BACKOFF = env_int("LAUNCHER_WEBHOOK_BACKOFF", 2, minimum=1, maximum=60)
# Email notifications are on only when LAUNCHER_EMAIL_HOST is set (plain SMTP, no login: a local relay).
LAUNCHER_EMAIL_HOST = env_str("LAUNCHER_EMAIL_HOST")
EMAIL_HOST = LAUNCHER_EMAIL_HOST or "localhost"
EMAIL_PORT = env_int("LAUNCHER_EMAIL_PORT", 25, minimum=1, maximum=65535)
DEFAULT_FROM_EMAIL = env_str("LAUNCHER_EMAIL_FROM", "flare-launcher@localhost")
LAUNCHER_ADMIN_USER = env_str("LAUNCHER_ADMIN_USER", "admin")
LAUNCHER_ADMIN_PASSWORD = env_str("LAUNCHER_ADMIN_PASSWORD")

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LAUNCHER_LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}, "celery": {"level": "WARNING"}},
}
