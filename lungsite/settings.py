"""Settings for lungsite, read from the environment.

Nothing needs to be set on a developer's machine: no DATABASE_URL means SQLite and no SUPABASE_URL
means local files, both under LUNGSITE_DATA_DIR (default ./var/). `.env.example` lists every variable.
"""

import os
import secrets
from pathlib import Path

import dj_database_url


def envbool(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    return value.strip().lower() in ("1", "true", "yes", "on")


def envint(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value not in (None, "") else default


def envlist(name: str, default: str) -> list[str]:
    return [item.strip() for item in os.environ.get(name, default).split(",") if item.strip()]


BASE_DIR = Path(__file__).resolve().parent.parent
DATA_DIR = Path(os.environ.get("LUNGSITE_DATA_DIR") or BASE_DIR / "var").resolve()
DATA_DIR.mkdir(parents=True, exist_ok=True)

DEBUG = envbool("DJANGO_DEBUG", False)


def _data_secret(variable: str, file_name: str) -> str:
    # A random key kept in the data folder beats a constant in the source: a fresh checkout works
    # with nothing set, and no two installations share a key by accident.
    if os.environ.get(variable):
        return os.environ[variable]
    key_file = DATA_DIR / file_name
    if not key_file.exists():
        key_file.write_text(secrets.token_urlsafe(64))
        key_file.chmod(0o600)
    return key_file.read_text().strip()


SECRET_KEY = _data_secret("DJANGO_SECRET_KEY", "secret_key")
ALLOWED_HOSTS = envlist("DJANGO_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]")
CSRF_TRUSTED_ORIGINS = envlist("DJANGO_CSRF_TRUSTED_ORIGINS", "")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "axes",
    # The apps, bottom to top (a lower one never imports a higher one; docs/architecture.md):
    "registry",
    "audit",
    "learning",
    "web",
    "jobs",
    "pacs",
]

MIDDLEWARE = [
    # First: counts and times every answer, those of the middleware below included (common.metrics).
    "common.metrics.MetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # Around everything that may query the database (sessions included): a stalled database gives
    # a 503 in seconds (see the module).
    "common.db_deadline.DatabaseDeadlineMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "common.middleware.PrivateResponsesMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "common.middleware.ServiceUnavailableMiddleware",
    # Last, as django-axes asks: it sees the outcome of every login attempt.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "lungsite.urls"
WSGI_APPLICATION = "lungsite.wsgi.application"

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

# Database: SQLite in the data folder unless DATABASE_URL names another (Postgres through psycopg 3).
DATABASE_URL = os.environ.get("DATABASE_URL", "")
# Seconds a database statement may run before it is cancelled and the request answers 503 (0: no
# bound). Requests are also cut off on the client side a little after it (common.db_deadline).
LUNGSITE_DB_STATEMENT_TIMEOUT_S = envint("LUNGSITE_DB_STATEMENT_TIMEOUT_S", 5)
if DATABASE_URL:
    _db = dj_database_url.parse(DATABASE_URL, conn_max_age=envint("DJANGO_CONN_MAX_AGE", 60))
    _db["CONN_HEALTH_CHECKS"] = True
    _db.setdefault("OPTIONS", {})
    _options = _db["OPTIONS"]
    # Every wait on the database is bounded, so a stalled database gives a 503 in seconds instead
    # of holding the worker: connecting (connect_timeout), a statement the server runs too long
    # (statement_timeout, server side), and a link that stops answering (TCP keepalives probe an
    # idle connection; tcp_user_timeout drops one whose sent data goes unacknowledged). A server
    # that keeps the TCP link alive but never answers is caught by common.db_deadline.
    _options.setdefault("connect_timeout", envint("DJANGO_DB_CONNECT_TIMEOUT", 5))
    _options.setdefault("keepalives", 1)
    _options.setdefault("keepalives_idle", envint("LUNGSITE_DB_KEEPALIVE_IDLE_S", 5))
    _options.setdefault("keepalives_interval", 1)
    _options.setdefault("keepalives_count", 3)
    _options.setdefault("tcp_user_timeout", envint("LUNGSITE_DB_TCP_USER_TIMEOUT_S", 10) * 1000)
    # Transaction poolers (Supabase's on 6543, PgBouncer in transaction mode) hand each transaction
    # to any server connection, so server-side prepared statements and cursors would point at the
    # wrong one; psycopg prepares nothing with prepare_threshold None, on any port.
    _transaction_pooler = str(_db.get("PORT")) == "6543"
    _options["prepare_threshold"] = None
    if _transaction_pooler:
        _db["DISABLE_SERVER_SIDE_CURSORS"] = True
        _db["CONN_MAX_AGE"] = 0
    elif LUNGSITE_DB_STATEMENT_TIMEOUT_S:
        # A startup parameter: poolers in transaction mode refuse it (set statement_timeout on the
        # database role there, see docs/deploy-supabase.md); common.db_deadline bounds both.
        _timeout = f"-c statement_timeout={LUNGSITE_DB_STATEMENT_TIMEOUT_S * 1000}"
        _options["options"] = f"{_options['options']} {_timeout}" if _options.get("options") else _timeout
else:
    _db = {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": DATA_DIR / "db.sqlite3",
        "OPTIONS": {
            # WAL lets readers go on while a worker writes; IMMEDIATE makes writers queue instead of
            # failing with "database is locked" when several gunicorn workers log predictions.
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
        },
        # The test database is a file too: an in-memory one is shared between threads through
        # SQLite's shared cache, whose table locks fail at once instead of waiting. One file per
        # test run, so two runs side by side do not share it.
        "TEST": {"NAME": DATA_DIR / f"test-db-{os.getpid()}.sqlite3"},
        # Kept open between requests, as on Postgres: a new connection runs init_command every time.
        "CONN_MAX_AGE": envint("DJANGO_CONN_MAX_AGE", 60),
        "CONN_HEALTH_CHECKS": True,
    }
DATABASES = {"default": _db}
# Separate roles (docs/audit.md, "Database roles"): DATABASE_URL names the application's role, which
# may only read and append the logs; DATABASE_MIGRATE_URL the tables' owner, used by
# `manage.py migrate --database owner` and nothing else.
DATABASE_MIGRATE_URL = os.environ.get("DATABASE_MIGRATE_URL", "")
if DATABASE_URL and DATABASE_MIGRATE_URL:
    _owner = dj_database_url.parse(DATABASE_MIGRATE_URL, conn_max_age=0)
    # The same bounded connection, without the statement timeout: a migration may run long.
    _owner["OPTIONS"] = {**{k: v for k, v in _options.items() if k != "options"}, **_owner.get("OPTIONS", {})}
    _owner["TEST"] = {"MIRROR": "default"}
    DATABASES["owner"] = _owner
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

# Storage: every byte goes through these aliases; nothing else knows where bytes live.
SUPABASE_URL = os.environ.get("SUPABASE_URL", "")
SUPABASE_KEY = os.environ.get("SUPABASE_KEY", "")
# Storage's own address, default SUPABASE_URL + "/storage/v1": a self-hosted or standalone Storage
# server serves its routes at its root.
SUPABASE_STORAGE_URL = os.environ.get("SUPABASE_STORAGE_URL", "").strip()
# Supabase buckets are private: url() gives signed URLs that expire after this many seconds.
LUNGSITE_SIGNED_URL_SECONDS = envint("LUNGSITE_SIGNED_URL_SECONDS", 300)
# Seconds to wait for Supabase Storage to answer before the request fails with a 503.
LUNGSITE_STORAGE_TIMEOUT = envint("LUNGSITE_STORAGE_TIMEOUT", 30)
STORAGE_DIR = DATA_DIR / "storage"


def _bucket(bucket: str) -> dict:
    if (SUPABASE_URL or SUPABASE_STORAGE_URL) and SUPABASE_KEY:
        return {"BACKEND": "common.supabase_storage.SupabaseStorage", "OPTIONS": {"bucket": bucket}}
    return {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": STORAGE_DIR / bucket, "base_url": None},
    }


STORAGES = {
    "default": {
        "BACKEND": "django.core.files.storage.FileSystemStorage",
        "OPTIONS": {"location": DATA_DIR / "media"},
    },
    "models": _bucket("models"),
    "xray_images": _bucket("xray-images"),
    "staticfiles": {"BACKEND": "whitenoise.storage.CompressedManifestStaticFilesStorage"},
}

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
MEDIA_ROOT = DATA_DIR / "media"

LUNGSITE_MAX_UPLOAD_MB = envint("LUNGSITE_MAX_UPLOAD_MB", 50)
# Uploads up to the limit stay in memory (the pipeline needs the bytes anyway); the request body
# limit leaves room for the multipart envelope so an oversize image gets our 413, not Django's 400.
FILE_UPLOAD_MAX_MEMORY_SIZE = LUNGSITE_MAX_UPLOAD_MB * 1024 * 1024
DATA_UPLOAD_MAX_MEMORY_SIZE = FILE_UPLOAD_MAX_MEMORY_SIZE + 1024 * 1024
# Decoded pixels allowed in one upload (a 1024x1024 X-ray is ~1 Mpx; large CR/DR plates ~20 Mpx).
LUNGSITE_MAX_PIXELS = envint("LUNGSITE_MAX_PIXELS", 60_000_000)
# Each upload is decoded in a child process with this much address space and time at most
# (engine/decode_pool.py): a 60 Mpx DICOM needs about 1 GB and a few seconds.
LUNGSITE_DECODE_TIMEOUT_S = envint("LUNGSITE_DECODE_TIMEOUT_S", 20)
LUNGSITE_DECODE_MAX_MB = envint("LUNGSITE_DECODE_MAX_MB", 2048)
# Fair decoding (analysis/decode_slots.py): uploads of at least this many MB are "heavy"; at most so
# many heavy decodes per user (more: 429) and overall (more: wait up to the queue time, then 503).
LUNGSITE_HEAVY_DECODE_MB = envint("LUNGSITE_HEAVY_DECODE_MB", 8)
LUNGSITE_HEAVY_DECODES_PER_USER = envint("LUNGSITE_HEAVY_DECODES_PER_USER", 1)
LUNGSITE_HEAVY_DECODES = envint("LUNGSITE_HEAVY_DECODES", max(1, (os.cpu_count() or 2) // 2))
LUNGSITE_DECODE_QUEUE_S = envint("LUNGSITE_DECODE_QUEUE_S", 10)
# A DICOM that says BurnedInAnnotation YES has text (names, dates) in its pixels: refused unless on.
LUNGSITE_ALLOW_BURNED_IN_ANNOTATION = envbool("LUNGSITE_ALLOW_BURNED_IN_ANNOTATION", False)
# Activation needs a measured evaluation (or a written override); the shadow version scores
# at most this fraction of live predictions (0 to 1), off the request path.
# The audit chain's head (row count, last hash) is checkpointed outside the database every N rows,
# and every LUNGSITE_AUDIT_CHECKPOINT_SECONDS by Celery beat (or `manage.py audit_checkpoint`).
LUNGSITE_AUDIT_CHECKPOINT_EVERY = envint("LUNGSITE_AUDIT_CHECKPOINT_EVERY", 1000)
LUNGSITE_AUDIT_CHECKPOINT_SECONDS = envint("LUNGSITE_AUDIT_CHECKPOINT_SECONDS", 300)
# The audit chain's HMAC keys, which the database never holds (audit/keys.py, docs/audit.md): one or
# more comma-separated, the first signs. Unset: the file below (created with a random key).
LUNGSITE_AUDIT_KEY = os.environ.get("LUNGSITE_AUDIT_KEY", "").strip()
# /metrics answers a scraper sending `Authorization: Bearer <this>` (and superusers); unset: superusers only.
LUNGSITE_METRICS_TOKEN = os.environ.get("LUNGSITE_METRICS_TOKEN", "").strip()
LUNGSITE_AUDIT_KEY_FILE = os.environ.get("LUNGSITE_AUDIT_KEY_FILE", "").strip() or str(
    DATA_DIR / "audit_keys"
)
LUNGSITE_ACTIVATION_GATE = envbool("LUNGSITE_ACTIVATION_GATE", True)
LUNGSITE_SHADOW_RATE = float(os.environ.get("LUNGSITE_SHADOW_RATE", "1.0") or 1.0)
# What a version's numbers must show before it counts as validated (docs/trust.md): a finding with
# fewer positives or negatives than the minimum is "not evaluable"; a version whose mean-AUROC 95 %
# interval includes 0.5 or whose mean is below the floor is NOT VALIDATED on every output.
LUNGSITE_EVAL_MIN_POSITIVES = envint("LUNGSITE_EVAL_MIN_POSITIVES", 10)
LUNGSITE_AUROC_FLOOR = float(os.environ.get("LUNGSITE_AUROC_FLOOR", "0.6") or 0.6)
LUNGSITE_BOOTSTRAP_ROUNDS = envint("LUNGSITE_BOOTSTRAP_ROUNDS", 1000)
# Inputs outside what the version was evaluated on: the threshold is this quantile of held-out
# evaluation images' distances; with LUNGSITE_OOD_REFUSE on they are refused (422) instead of marked.
LUNGSITE_OOD_QUANTILE = float(os.environ.get("LUNGSITE_OOD_QUANTILE", "0.95") or 0.95)
LUNGSITE_OOD_REFUSE = envbool("LUNGSITE_OOD_REFUSE", False)
# Drift: a week whose score distribution's population-stability index against the evaluation set
# passes this value (for any finding, with at least LUNGSITE_DRIFT_MIN_WEEKLY predictions) alerts.
LUNGSITE_DRIFT_PSI_ALERT = float(os.environ.get("LUNGSITE_DRIFT_PSI_ALERT", "0.25") or 0.25)
LUNGSITE_DRIFT_MIN_WEEKLY = envint("LUNGSITE_DRIFT_MIN_WEEKLY", 30)

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# Brute-force protection for the login form and the admin (django-axes).
AXES_FAILURE_LIMIT = envint("LUNGSITE_LOGIN_FAILURE_LIMIT", 5)
AXES_COOLOFF_TIME = 0.25  # hours
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"]]
AXES_RESET_ON_SUCCESS = True
# The lockout answer (429): a page saying for how long, and the way back (templates/registration).
AXES_LOCKOUT_TEMPLATE = "registration/lockout.html"

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

# Django's cache holds the API throttle's counts (common/throttling.py). Unset: local memory, so
# each gunicorn worker counts on its own. A Redis URL (redis://host:6379/0; rediss:// for TLS) shares
# them between workers and hosts; the short timeouts keep a Redis outage from stalling requests (the
# throttle then lets requests through and logs it).
LUNGSITE_CACHE_URL = os.environ.get("LUNGSITE_CACHE_URL", "").strip()
if LUNGSITE_CACHE_URL:
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": LUNGSITE_CACHE_URL,
            "KEY_PREFIX": "lungsite",
            "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
        }
    }
else:
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    # JSON only: integrations read JSON, people read /api/v1/docs/ (the browsable API would answer
    # browsers' errors in HTML).
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "common.api_errors.exception_handler",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "DEFAULT_THROTTLE_RATES": {
        "predictions": os.environ.get("LUNGSITE_PREDICTION_RATE", "600/minute"),
    },
}

SPECTACULAR_SETTINGS = {
    "TITLE": "lungsite API",
    "DESCRIPTION": (
        "Chest X-ray findings with Grad-CAM heatmaps, a model registry with hot swap, and an audit "
        "log. For education and research; not a medical device."
    ),
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "COMPONENT_SPLIT_REQUEST": True,
    # Swagger UI and ReDoc assets come from the drf-spectacular-sidecar package: no CDN, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

# HTTPS: on whenever DEBUG is off, unless DJANGO_HTTPS=0 (e.g. a load test on loopback).
HTTPS = envbool("DJANGO_HTTPS", not DEBUG)
SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")
SECURE_SSL_REDIRECT = HTTPS
SECURE_REDIRECT_EXEMPT = [r"^healthz$"]
SESSION_COOKIE_SECURE = HTTPS
CSRF_COOKIE_SECURE = HTTPS
SECURE_HSTS_SECONDS = 31_536_000 if HTTPS else 0
SECURE_HSTS_INCLUDE_SUBDOMAINS = HTTPS
SECURE_HSTS_PRELOAD = HTTPS
SECURE_CONTENT_TYPE_NOSNIFF = True
SECURE_REFERRER_POLICY = "same-origin"
X_FRAME_OPTIONS = "DENY"
SESSION_COOKIE_HTTPONLY = True

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": os.environ.get("LUNGSITE_LOG_LEVEL", "INFO")},
    "loggers": {
        "django.db.backends": {"level": "INFO"},
        "axes": {"level": "WARNING"},
        # httpx logs every Supabase Storage request at INFO, signed-URL tokens included.
        "httpx": {"level": "WARNING"},
    },
}

# Celery (lungsite/celery.py): batch jobs, PACS analysis and delivery, training runs.
# LUNGSITE_BROKER_URL names the Celery broker: Redis
# (redis://127.0.0.1:6379/1) or RabbitMQ (amqp://...), shared by every web and worker host. Unset:
# kombu's filesystem transport under the data folder, which needs no service and which the workers
# that `make run` starts on this machine read; it cannot reach workers on other hosts.
LUNGSITE_BROKER_URL = os.environ.get("LUNGSITE_BROKER_URL", "").strip()
LUNGSITE_BATCH_SIZE = envint("LUNGSITE_BATCH_SIZE", 8)
# Batches per task: a task decodes its next batch while the model runs on the current one.
LUNGSITE_JOB_BATCHES_PER_TASK = envint("LUNGSITE_JOB_BATCHES_PER_TASK", 4)
LUNGSITE_MAX_JOB_IMAGES = envint("LUNGSITE_MAX_JOB_IMAGES", 1000)
# A ZIP's members inflated together may not exceed this (each member also LUNGSITE_MAX_UPLOAD_MB).
LUNGSITE_MAX_JOB_MB = envint("LUNGSITE_MAX_JOB_MB", 2048)
# One user's images staged and not analysed yet, over all their jobs (the image store's share).
LUNGSITE_MAX_USER_INFLIGHT_MB = envint("LUNGSITE_MAX_USER_INFLIGHT_MB", 4096)
if LUNGSITE_BROKER_URL:
    CELERY_BROKER_URL = LUNGSITE_BROKER_URL
    # A task taken by a worker that dies unacknowledged goes back to the queue after this many
    # seconds (Redis and SQS; RabbitMQ redelivers when the connection drops). Longer than a batch.
    # Seconds per image of a task, not an hour: a killed worker's images come back within minutes.
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "visibility_timeout": envint(
            "LUNGSITE_BROKER_VISIBILITY_TIMEOUT",
            60 + 10 * LUNGSITE_BATCH_SIZE * LUNGSITE_JOB_BATCHES_PER_TASK,
        ),
    }
else:
    _broker_dir = DATA_DIR / "broker"
    for _folder in ("out", "processed", "control"):
        (_broker_dir / _folder).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_URL = "filesystem://"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(_broker_dir / "out"),
        "data_folder_out": str(_broker_dir / "out"),
        "processed_folder": str(_broker_dir / "processed"),
        "control_folder": str(_broker_dir / "control"),
        "store_processed": False,
    }
# Progress and results live in the database (jobs.models): no result backend.
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_DEFAULT_QUEUE = os.environ.get("LUNGSITE_JOBS_QUEUE", "lungsite-jobs")
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TASK_ALWAYS_EAGER = envbool("LUNGSITE_JOBS_EAGER", False)
# Threads, not prefork (lungsite/celery.py says why); one task at a time per worker by default: a
# task already runs its decoding and the model's threads in parallel.
CELERY_WORKER_POOL = os.environ.get("LUNGSITE_WORKER_POOL", "threads")
CELERY_WORKER_CONCURRENCY = envint("LUNGSITE_WORKER_CONCURRENCY", 1)
# Results the PACS did not take yet are sent again by Celery beat (or `manage.py pacs_deliver`).
CELERY_BEAT_SCHEDULE = {
    "pacs-deliver-due": {"task": "pacs.tasks.results_deliver_due", "schedule": 30.0},
    "audit-checkpoint": {
        "task": "audit.tasks.chain_checkpoint",
        "schedule": float(LUNGSITE_AUDIT_CHECKPOINT_SECONDS),
    },
}

# PACS (docs/pacs.md): the C-STORE receiver and where results go back by STOW-RS.
LUNGSITE_DICOM_AE_TITLE = os.environ.get("LUNGSITE_DICOM_AE_TITLE", "LUNGSITE")
# Loopback by default: opening the receiver to the network takes an allow-list (docs/pacs.md).
LUNGSITE_DICOM_HOST = os.environ.get("LUNGSITE_DICOM_HOST", "127.0.0.1")
LUNGSITE_DICOM_PORT = envint("LUNGSITE_DICOM_PORT", 11112)
# Calling AE titles that may associate, comma-separated ("*": any; empty: any, on loopback only).
LUNGSITE_DICOM_CALLING_AETS = envlist("LUNGSITE_DICOM_CALLING_AETS", "")
# DICOM TLS (pynetdicom ssl_context): the server certificate and key (PEM); with a CA file, callers
# must present a certificate it signed.
LUNGSITE_DICOM_TLS_CERT = os.environ.get("LUNGSITE_DICOM_TLS_CERT", "")
LUNGSITE_DICOM_TLS_KEY = os.environ.get("LUNGSITE_DICOM_TLS_KEY", "")
LUNGSITE_DICOM_TLS_CA = os.environ.get("LUNGSITE_DICOM_TLS_CA", "")
# STOW-RS: parts per request; a request past it is refused before anything is recorded.
LUNGSITE_STOW_MAX_PARTS = envint("LUNGSITE_STOW_MAX_PARTS", 500)
# A result object that cannot be built is failed (with the reason, on the worklist) after this many tries.
LUNGSITE_PACS_BUILD_ATTEMPTS = envint("LUNGSITE_PACS_BUILD_ATTEMPTS", 3)
LUNGSITE_DICOMWEB_URL = os.environ.get("LUNGSITE_DICOMWEB_URL", "").strip().rstrip("/")
LUNGSITE_DICOMWEB_USER = os.environ.get("LUNGSITE_DICOMWEB_USER", "")
LUNGSITE_DICOMWEB_PASSWORD = os.environ.get("LUNGSITE_DICOMWEB_PASSWORD", "")
LUNGSITE_DICOMWEB_TOKEN = os.environ.get("LUNGSITE_DICOMWEB_TOKEN", "")
LUNGSITE_DICOMWEB_TIMEOUT = envint("LUNGSITE_DICOMWEB_TIMEOUT", 30)
# Retries of a result the PACS did not take: 30 s, 1, 2, 4 ... minutes, at most an hour apart.
# The key of the keyed hash (HMAC-SHA256) that stands for the PACS's patient ID, so the result page
# can show the same patient's earlier results without lungsite storing the ID (docs/pacs.md).
# Changing it ends the matching of earlier rows.
LUNGSITE_PATIENT_KEY_SECRET = _data_secret("LUNGSITE_PATIENT_KEY_SECRET", "patient_key_secret")
LUNGSITE_PACS_RETRY_SECONDS = envint("LUNGSITE_PACS_RETRY_SECONDS", 30)
LUNGSITE_PACS_RETRY_MAX_SECONDS = envint("LUNGSITE_PACS_RETRY_MAX_SECONDS", 3600)
