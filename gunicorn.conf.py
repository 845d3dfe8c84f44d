"""gunicorn settings for lungsite: `gunicorn` (this file is read from the working directory) or
`gunicorn -c gunicorn.conf.py`. Every value can be overridden from the environment (names below).

Sizing, for CPU inference on a small box:
- A prediction is one DenseNet121 forward pass (ONNX Runtime, engine/serving.py): compute-bound,
  and the runtime spreads it over as many threads as it is given. What matters is that all busy
  compute threads together do not exceed the cores; past that they only steal time from each other
  (and each other's caches).
- So: one worker process per core (GUNICORN_WORKERS, default the cores this process may use, cgroup
  CPU quota included) and intra-op threads per worker = max(1, cores // workers)
  (LUNGSITE_TORCH_THREADS, read when a worker opens a model's session; default 1 with the default
  worker count). Processes rather than one process with many threads: Django and parts of decoding
  run under the GIL, and processes keep those parallel too.
- 2 threads per worker (GUNICORN_THREADS, gthread worker): while one request waits on I/O (Supabase
  Storage upload, Postgres over the network, a slow client), the other can compute. When both
  compute at once the worker briefly runs two forwards; that costs latency, not throughput.
- Memory: each worker holds its own copy of the model(s) it serves (the active version and the one
  before it, see registry/cache.py). Lower GUNICORN_WORKERS (and raise LUNGSITE_TORCH_THREADS) on a
  box short of memory.
- preload_app stays off: runtime thread pools do not survive fork(), and the model is loaded lazily
  per worker from the active row anyway (hot swap), so preloading would save nothing.
- max_requests (+ jitter, so workers do not restart together) bounds slow memory growth from
  allocator fragmentation; a restarted worker reloads its model on its next request.

Static files are served by whitenoise from STATIC_ROOT with a manifest: run
`python manage.py collectstatic --no-input` before starting (checked below when DEBUG is off).
"""

import math
import os


def _envint(name: str, default: int) -> int:
    value = os.environ.get(name, "").strip()
    return int(value) if value else default


def _cores() -> int:
    """Cores this process may use: the CPU affinity mask, capped by a cgroup v2 CPU quota (a
    container limited to 2 CPUs on a 64-core host must not start 64 workers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cores = os.cpu_count() or 1
    try:
        with open("/sys/fs/cgroup/cpu.max") as handle:
            quota, period = handle.read().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


CORES = _cores()

wsgi_app = "lungsite.wsgi:application"

# GUNICORN_BIND wins; else $PORT (as PaaS hosts set it) on all interfaces; else loopback only.
if os.environ.get("GUNICORN_BIND"):
    bind = os.environ["GUNICORN_BIND"].split(",")
elif os.environ.get("PORT"):
    bind = [f"0.0.0.0:{os.environ['PORT']}"]
else:
    bind = ["127.0.0.1:8000"]

workers = max(1, _envint("GUNICORN_WORKERS", CORES))
threads = max(1, _envint("GUNICORN_THREADS", 2))
worker_class = "gthread"

# Set before the workers fork, so every worker inherits it; an explicit value wins (an empty one, as
# a copied .env.example leaves it, counts as unset).
if not os.environ.get("LUNGSITE_TORCH_THREADS", "").strip():
    os.environ["LUNGSITE_TORCH_THREADS"] = str(max(1, CORES // workers))
# OpenMP/BLAS pools (numpy, torch's own at import) follow the same budget.
if not os.environ.get("OMP_NUM_THREADS", "").strip():
    os.environ["OMP_NUM_THREADS"] = os.environ["LUNGSITE_TORCH_THREADS"]

# A worker's first request may download the weights from storage and load them before its forward
# pass; 60 s covers that on a slow link while still catching a hung worker.
timeout = _envint("GUNICORN_TIMEOUT", 60)
graceful_timeout = _envint("GUNICORN_GRACEFUL_TIMEOUT", 30)
keepalive = 5
preload_app = False

max_requests = _envint("GUNICORN_MAX_REQUESTS", 1000)
max_requests_jitter = _envint("GUNICORN_MAX_REQUESTS_JITTER", max(1, max_requests // 10))

# Logs to stdout/stderr for the platform to collect; %(M)s is the request time in milliseconds.
accesslog = "-"
errorlog = "-"
access_log_format = '%(h)s "%(r)s" %(s)s %(b)s %(M)sms "%(a)s"'
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")

# gunicorn's control socket defaults to one path per user ($XDG_RUNTIME_DIR/gunicorn.ctl), so a
# second instance on the host would remove the first's. Off unless a path is given (make it one
# per instance, e.g. under LUNGSITE_DATA_DIR).
control_socket = os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip() or "gunicorn.ctl"
control_socket_disable = not os.environ.get("GUNICORN_CONTROL_SOCKET", "").strip()

# Prometheus values of every worker in one folder (prometheus_client's multiprocess mode), added up
# by each scrape of /metrics (common/metrics.py). Set here, before any worker imports the client.
if not os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip():
    _data = os.environ.get("LUNGSITE_DATA_DIR", "").strip() or os.path.join(os.path.dirname(__file__), "var")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.path.join(os.path.abspath(_data), "prometheus")

# The workers' heartbeat files on tmpfs: a slow or overlay disk cannot stall them.
if os.path.isdir("/dev/shm"):
    worker_tmp_dir = "/dev/shm"


def on_starting(server):
    """Refuses to start without collected static files when DEBUG is off: whitenoise's manifest
    storage would otherwise fail every page that links a stylesheet."""
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "lungsite.settings")
    from django.conf import settings

    _metrics_folder_ready(os.environ["PROMETHEUS_MULTIPROC_DIR"])
    manifest = os.path.join(str(settings.STATIC_ROOT), "staticfiles.json")
    if not settings.DEBUG and not os.path.exists(manifest):
        server.log.error("No %s: run `python manage.py collectstatic --no-input` first.", manifest)
        raise SystemExit(1)
    server.log.info(
        "lungsite: %d worker(s) x %d thread(s), LUNGSITE_TORCH_THREADS=%s, %d core(s) available",
        workers,
        threads,
        os.environ["LUNGSITE_TORCH_THREADS"],
        CORES,
    )


def _metrics_folder_ready(folder: str) -> None:
    """Creates the metrics folder and removes the files of processes that are gone (an earlier run's
    workers): their counts would otherwise be added to this run's forever. A Celery worker of this
    host that shares the folder (docs/ops.md) keeps its files while it runs."""
    os.makedirs(folder, exist_ok=True)
    for name in os.listdir(folder):
        pid = name.rsplit("_", 1)[-1].split(".", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            os.remove(os.path.join(folder, name))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def child_exit(server, worker):
    """A worker that exits leaves its counters (still counted) but no live gauges."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Readies the worker before it takes requests:
    - starts its decoding process (engine/decode_pool.py), so its first upload does not wait
      for the fork server to import the decoders (~1-2 s);
    - loads the active model and the URLconf, so the first prediction is as fast as the rest;
    - moves every object that exists by then (Django, DRF, numpy: hundreds of thousands) out of
      reach of Python's cyclic garbage collector (`gc.freeze`), so that the collections that
      requests trigger no longer walk them all (under load: the collector's share of a worker's
      CPU 1.1% -> 0.2%, perf, 4 clients)."""
    import gc

    from engine import decode_pool

    decode_pool.warm_up()
    _warm_model(worker)
    gc.collect()
    gc.freeze()


def _warm_model(worker):
    """Loads the active version and runs one forward pass on a blank picture, so the first upload
    after a start (or a worker restart) is as fast as the others instead of paying the load (about
    10 s on 2 cores). A failure only logs: the first request then loads the model as it always could."""
    import logging

    log = worker.log if worker is not None else logging.getLogger("gunicorn.error")
    try:
        import numpy as np
        from django.urls import resolve

        # Django imports the URLconf (every view, API and admin module) on the first request
        # otherwise: 0.5-0.7 s of the first upload after a start, measured under `make run`.
        resolve("/healthz")

        from engine.pipeline import predict, preprocess
        from registry.cache import get_active
        from registry.models import DEFAULT_PREPROCESSING

        serving = get_active()
        spec = serving.version.preprocessing or DEFAULT_PREPROCESSING
        predict(serving.model, preprocess(np.zeros((512, 512), np.float32), spec))
        log.info("lungsite: warmed model %s", serving.version.version_name)
    except Exception as exc:  # noqa: BLE001 - no model yet, database not reachable, ...
        log.warning("lungsite: model not warmed (%s); the first request loads it", exc)
