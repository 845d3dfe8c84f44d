"""lungsite benchmark: prints ONE JSON object with the ratios of docs/performance.md "Targets".

    .venv/bin/python bench/run.py            # full run
    .venv/bin/python bench/run.py --quick    # fewer images and requests (`make bench`)

It installs a throwaway lungsite (temp LUNGSITE_DATA_DIR: SQLite + local storage, removed at the end
unless --keep), then measures on the real images of ../shared/data:
- in-process, side by side: ONNX Runtime's bare forward of the active weights (the reference),
  the serving forward, `pipeline.predict` (forward + all heatmaps), torch eager (context), the API
  through Django's test client, and each stage of a request (decode, preprocess, audit write, ...);
- on a real gunicorn server on 127.0.0.1 (gunicorn.conf.py): one client, 4 concurrent clients
  against the bare-forward loop, 20 activations under load, and the workers' peak RSS.
Progress goes to stderr; only the JSON goes to stdout. The batch-job target is measured by
bench/jobs.py (Celery workers). What each figure means: docs/performance.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import shutil
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import install as bench_install  # noqa: E402
from bench import memory as bench_memory  # noqa: E402
from bench.timing import median, ratio, spread, timed_ms  # noqa: E402

logger = logging.getLogger("bench")

# docs/performance.md "Targets": at most these, except throughput (at least) and failures (exactly).
TARGETS = {
    "heatmaps_over_forward": 1.15,
    "api_p50_over_forward": 1.5,
    "forward_over_onnxruntime": 1.1,
    "throughput_c4_over_loop": 0.80,  # a minimum
    "cpu_per_request_over_forward_cpu": 1.3,
    "swap_failed_requests": 0,
    "swap_back_ms": 5.0,
}
WORKER_PEAK_RSS_MB = 500  # one version loaded, after the single-model phases


def log(message: str, *args) -> None:
    logger.info(message, *args)


def _setup_logging() -> None:
    # Its own handler: Django's LOGGING (set up later) must not silence or duplicate the progress.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("bench %(asctime)s %(message)s", "%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def cores() -> int:
    from engine.serving import available_cores

    return available_cores()


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer images and repetitions (< 3 min)")
    parser.add_argument("--images", type=int, help="latency images (default 16 quick, 32 full)")
    parser.add_argument("--reps", type=int, help="passes over the images in-process (default 2 / 4)")
    parser.add_argument(
        "--workers", type=int, help="gunicorn workers (default: gunicorn.conf.py's, the cores)"
    )
    parser.add_argument("--activations", type=int, default=20, help="activations under load (default 20)")
    parser.add_argument("--no-server", action="store_true", help="in-process measurements only")
    parser.add_argument("--database-url", help="benchmark against this database instead of a temp SQLite")
    parser.add_argument(
        "--threads",
        type=int,
        help="intra-op threads of the serving runtime and the reference, in-process and per worker "
        "(default: gunicorn.conf.py's LUNGSITE_TORCH_THREADS, cores // workers)",
    )
    parser.add_argument("--keep", action="store_true", help="keep the temp data folder and server log")
    return parser.parse_args(argv)


def versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for name in ("torch", "torchvision", "onnxruntime", "onnx", "numpy", "django", "pillow", "gunicorn"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def machine() -> dict:
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "cores": cores(), "load_avg_at_start": [round(v, 2) for v in os.getloadavg()]}


# --------------------------------------------------------------------------------------------
# Server phases


class _Live:
    """Answers as they arrive, so the activating thread can see when a swap was picked up."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items = []

    def add(self, outcome) -> None:
        with self.lock:
            self.items.append(outcome)

    def since(self, started: float) -> list:
        with self.lock:
            return [o for o in self.items if o.started >= started]


def _cpu_seconds(worker_pids: list[int]) -> dict:
    """CPU seconds (user + system) used so far by the gunicorn workers (with their live child
    processes: the decoding processes of engine.decode_pool and their fork server) and by this
    process."""
    import psutil

    workers = 0.0
    for pid in worker_pids:
        try:
            worker = psutil.Process(pid)
            processes = [worker, *worker.children(recursive=True)]
        except psutil.Error:
            continue
        for process in processes:
            try:
                times = process.cpu_times()
                workers += times.user + times.system
            except psutil.Error:
                pass
    own = psutil.Process().cpu_times()
    return {"gunicorn_workers": workers, "benchmark_clients": own.user + own.system}


def swap_under_load(
    *, port, token, admin_token, bodies, ids: tuple[int, int], activations: int, clients: int
) -> dict:
    """`clients` threads post predictions without pause while this thread activates the two
    versions in turn, `activations` times, through `POST /api/v1/models/<id>/activate/` on the same
    server (a model-admin's token), so a worker runs each activation as it would for an integrator.
    After each activation it waits (up to 30 s) until two answers started after the commit came
    from the new version: every worker picks it up on its next request, with no restart or signal."""
    from bench.server import post_empty, run_clients
    from registry.models import ModelVersion

    versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=ids)}
    known = {v.version_name for v in versions.values()}
    live = _Live()
    stop = threading.Event()
    holder = {}

    def load() -> None:
        holder["result"] = run_clients(
            port, token, bodies, clients=clients, stop=stop, max_s=240, on_outcome=live.add
        )

    thread = threading.Thread(target=load, daemon=True)
    thread.start()
    events = []
    try:
        time.sleep(0.5)
        for i in range(activations):
            target = versions[ids[1] if i % 2 == 0 else ids[0]]
            status, answer = post_empty(port, f"/api/v1/models/{target.pk}/activate/", token=admin_token)
            if status != 200:
                raise RuntimeError(f"activation answered {status}: {answer[:300]!r}")
            committed = time.perf_counter()
            deadline = committed + 30
            while time.perf_counter() < deadline and thread.is_alive():
                if sum(1 for o in live.since(committed) if o.version == target.version_name) >= 2:
                    break
                time.sleep(0.05)
            events.append(
                {
                    "version": target.version_name,
                    "committed": committed,
                    "picked_up_s": time.perf_counter() - committed,
                }
            )
    finally:
        stop.set()
        thread.join(timeout=300)
    result = holder.get("result")
    outcomes = result.outcomes if result else []
    failed = [o for o in outcomes if o.status != 201 or o.version not in known]
    # The first answer after a switch back to a version already loaded (from the third activation
    # on, every worker that served both versions has both loaded): server-side context only.
    first_after = []
    for event in events[2:]:
        after = [o for o in outcomes if o.started >= event["committed"] and o.version == event["version"]]
        if after:
            first_after.append(after[0].ms)
    return {
        "requests": len(outcomes),
        "failed": len(failed),
        "failures": [{"status": o.status, "error": o.error, "version": o.version} for o in failed[:5]],
        "activations": len(events),
        "picked_up_s": spread([e["picked_up_s"] for e in events]),
        "first_response_after_switch_back_ms": spread(first_after),
        "response_ms_during_swaps": spread([o.ms for o in outcomes]),
    }


def server_phase(
    *,
    inst,
    args,
    images: list[bytes],
    reference,
    reference_graph,
    arrays,
    workers: int,
    threads: int,
    quick: bool,
):
    from bench import server as bench_server
    from bench.bare_loop import KINDS, BareLoop

    out: dict = {}
    log_path = inst.data_dir / "gunicorn.log"
    server = bench_server.Server(root=ROOT, env=inst.env, workers=workers, threads=2, log_path=log_path)
    out["gunicorn"] = {"workers": workers, "threads_per_worker": 2, "LUNGSITE_TORCH_THREADS": threads}
    bodies = [bench_server.multipart(data, f"image{i}.png") for i, data in enumerate(images)]

    try:
        out["start_s"] = round(server.start(), 2)
        log("gunicorn up on 127.0.0.1:%d in %.1f s (%d workers)", server.port, out["start_s"], workers)
        # Warm-up until every worker has served (its model loaded, ONNX Runtime mapped): keep-alive
        # connections stick to one worker, so a fixed number of requests may leave one cold.
        warm_outcomes, warm_started = [], time.perf_counter()
        while time.perf_counter() - warm_started < 150:
            warm = bench_server.run_clients(
                server.port, inst.token, bodies, clients=workers * 2, per_client=2, max_s=120
            )
            warm_outcomes += warm.outcomes
            if all(server.worker_has_loaded(pid) for pid in server.worker_pids()):
                break
        out["warmup_requests"] = len(warm_outcomes)
        out["warmup_failed"] = sum(1 for o in warm_outcomes if o.status != 201)
        if out["warmup_failed"]:
            out["warmup_errors"] = [o.error for o in warm_outcomes if o.status != 201][:3]
        out["first_requests_ms"] = [round(o.ms, 1) for o in warm_outcomes[: workers * 2]]

        # One client, each request followed by ONNX Runtime's bare forward here (server idle then).
        n_one = 12 if quick else 32
        client = bench_server.PredictClient(server.port, inst.token)
        one, bare = [], []
        try:
            for i in range(n_one):
                one.append(client.post(*bodies[i % len(bodies)]))
                bare.append(timed_ms(reference.run, None, {"input": arrays[i % len(arrays)]}))
        finally:
            client.close()
        out["one_client"] = spread([o.ms for o in one if o.status == 201])
        out["one_client"]["failed"] = sum(1 for o in one if o.status != 201)
        out["api_gunicorn_one_client_over_forward"] = ratio(
            median([o.ms for o in one if o.status == 201]),
            median(bare),
            a="POST /api/v1/predictions/ on gunicorn over loopback, one client, p50 (HTTP included)",
            b="ONNX Runtime bare forward in the benchmark process, alternating with the requests",
        )
        log(
            "gunicorn one client: p50 %.1f ms (bare forward %.1f ms)",
            out["one_client"]["p50"] or -1,
            median(bare),
        )

        rounds = 3 if quick else 5
        window_s = 3.0 if quick else 6.0
        per_thread = 8 if quick else 16
        # The bare-forward loop: ONNX Runtime's bare forward of the reference graph back to back, in
        # a process of its own (bench/bare_loop.py), at one thread, at ORT's default and at one
        # thread per core set explicitly. (ORT's default pins its pool threads to cores: when the
        # calling thread shares a core with one, the default runs at one thread's speed or worse, so
        # it alone is not the loop's best.) Also, stricter, `workers` single-thread loops at once
        # (the most forwards per second these cores give). Loops and 4-client windows alternate, loop
        # first and last; the windows' median and each loop's fastest run are compared (below).
        loop_process = BareLoop(reference_graph, arrays, cores=cores(), folder=inst.data_dir)
        sequential = KINDS[:3]
        loops: dict[str, list[float]] = {name: [] for name in KINDS}

        def run_loops() -> None:
            for name in sequential:
                loops[name].append(loop_process.run(name, parallel=1, per_thread=per_thread * workers))
            loops["parallel"].append(loop_process.run("parallel", parallel=workers, per_thread=per_thread))

        windows: list = []
        cpu = {"gunicorn_workers": 0.0, "benchmark_clients": 0.0}  # during the windows only
        try:
            for _ in range(rounds):
                run_loops()
                before = _cpu_seconds(server.worker_pids())
                windows.append(
                    bench_server.steady_rate(
                        server.port, inst.token, bodies, clients=4, seconds=window_s, ramp_s=0.5
                    )
                )
                after = _cpu_seconds(server.worker_pids())
                for name in cpu:
                    cpu[name] += after[name] - before[name]
            run_loops()
        finally:
            loop_process.close()
        outcomes = [o for w in windows for o in w.load.outcomes]
        c4_ms = median([w.ms_per_request for w in windows])
        loop_ms = {name: median(values) for name, values in loops.items()}
        out["c4"] = {
            "requests": len(outcomes),
            "failed": sum(1 for o in outcomes if o.status != 201),
            "rounds": rounds,
            "window_s": window_s,
            "ms_per_request_by_round": [w.ms_per_request and round(w.ms_per_request, 2) for w in windows],
            "completed_in_windows": [w.completed_in_window for w in windows],
            "latency_ms": spread([o.ms for o in outcomes]),
            "bare_loop_ms_per_forward": {k: [round(v, 2) for v in values] for k, values in loops.items()},
            # Where the 2 cores went during the 4-client runs, per request: the gunicorn workers
            # (the whole request, their decoding processes included) and the benchmark's own
            # client threads (same machine).
            "cpu_ms_per_request": {
                name: round(seconds * 1000 / max(1, len(outcomes)), 2) for name, seconds in cpu.items()
            },
        }
        a_text = (
            "wall ms per request, 4 concurrent clients on gunicorn (the full API request: upload, decode, "
            f"forward, heatmaps, audit write, response), steady state, median of {rounds} windows"
        )
        # The loop's figure is its fastest run: a loop at 2 threads stalls whenever anything else
        # takes one of the cores for a moment (it ran at 50-58 ms instead of 31-33 in whole runs
        # here), and a disturbance can only slow a loop down. So the fastest run is the closest to
        # the undisturbed loop, and it errs against the server (whose windows are medians).
        fastest = {name: min(loops[name]) for name in sequential}
        best = min(fastest, key=fastest.get)
        # Two independent single-thread loops are not slowed that way; a 2-thread loop whose best
        # run is still far slower than they are was disturbed throughout, and the ratio would flatter
        # the server: it is then reported but not counted as meeting the target.
        disturbed = bool(loop_ms["parallel"]) and fastest[best] > 1.25 * loop_ms["parallel"]
        # Throughput ratio = (requests/s at 4 clients) / (forwards/s of the loop) = b_ms / a_ms.
        out["throughput_c4_over_loop"] = {
            "ratio": round(fastest[best] / c4_ms, 3) if c4_ms else None,
            "a_ms": c4_ms,
            "b_ms": round(fastest[best], 3),
            "a": a_text,
            "b": "wall ms per forward of the bare-forward loop (ONNX Runtime, one process, back to back): "
            "the fastest of the runs at 1 thread, at ORT's default threads and at one thread per core "
            f"({rounds + 1} of each); here {best}",
            "ratio_is": "throughput ratio = b_ms / a_ms (higher is better)",
            "loop_disturbed": disturbed,
        }
        out["throughput_c4_over_parallel_loop"] = {
            "ratio": round(loop_ms["parallel"] / c4_ms, 3) if c4_ms else None,
            "a_ms": c4_ms,
            "b_ms": loop_ms["parallel"],
            "a": a_text,
            "b": f"wall ms per forward of {workers} single-thread bare-forward loops at once (one per "
            "gunicorn worker: the most forwards/s the cores give)",
            "ratio_is": "throughput ratio = b_ms / a_ms (higher is better)",
        }
        log(
            "c4: %.1f ms/request; bare loops (ms/forward): %s",
            c4_ms or -1,
            ", ".join(f"{k} {v:.1f}" for k, v in loop_ms.items()),
        )
        out["memory_one_model"] = server.worker_memory_mb()

        swap = swap_under_load(
            port=server.port,
            token=inst.token,
            admin_token=inst.admin_token,
            bodies=bodies,
            ids=(inst.starter_id, inst.second_id),
            activations=args.activations,
            clients=2 if quick else 4,
        )
        out["swap"] = swap
        log("swap under load: %d requests, %d failed", swap["requests"], swap["failed"])
        out["memory_two_models"] = server.worker_memory_mb()

        # The largest images the decoder accepts, their pictures fetched; then each worker's memory.
        from bench import largest

        out["largest_images"] = largest.largest_phase(
            port=server.port,
            token=inst.token,
            username=inst.username,
            images=largest.largest_images(bench_install.latency_images(1)[0]),
            log=log,
        )
        out["memory_after_largest_images"] = server.worker_memory_mb()
    finally:
        server.stop()
    return out


# --------------------------------------------------------------------------------------------


def main(argv=None) -> int:
    args = parse_args(argv)
    _setup_logging()
    started = time.perf_counter()
    quick = args.quick
    n_images = args.images or (16 if quick else 32)
    reps = args.reps or (2 if quick else 4)
    n_cores = cores()
    workers = max(1, args.workers or n_cores)
    threads = max(1, args.threads or n_cores // workers)  # gunicorn.conf.py's LUNGSITE_TORCH_THREADS

    paths = bench_install.latency_images(n_images)  # before anything else: exits if the data is absent
    inst = bench_install.install(database_url=args.database_url, threads=threads, log=log)
    result: dict = {"quick": quick, "machine": machine(), "cores": n_cores, "versions": versions()}
    try:
        import torch

        torch.set_num_threads(threads)
        from django.contrib.auth import get_user_model

        from bench import inprocess
        from engine.decode import decode
        from engine.pipeline import preprocess
        from registry import cache
        from registry.models import DEFAULT_PREPROCESSING

        static_s = bench_install.collectstatic(log)  # gunicorn.conf.py refuses to start without it
        images = [p.read_bytes() for p in paths]
        serving = cache.get_active()
        spec = serving.version.preprocessing or DEFAULT_PREPROCESSING
        tensors = [preprocess(decode(data), spec) for data in images]
        size = int(spec.get("input_size", 224))
        # The torch reference: the same weights loaded afresh (the serving object may run elsewhere).
        from engine.weights import load_model
        from registry.storage import weights_read

        torch_model = load_model(
            weights_read(serving.version),
            architecture=serving.version.architecture,
            num_classes=len(serving.version.class_names),
        )
        reference, reference_graph, export_ms = inprocess.reference_session(torch_model, size, threads)
        ort_options = reference.get_session_options()
        session = serving.model.session
        result["threads"] = {
            "torch_intra_op": torch.get_num_threads(),
            "torch_inter_op": torch.get_num_interop_threads(),
            "ort_reference_intra_op": ort_options.intra_op_num_threads,
            "ort_reference_inter_op": ort_options.inter_op_num_threads,
            "ort_serving_intra_op": session.get_session_options().intra_op_num_threads,
            "ort_serving_inter_op": session.get_session_options().inter_op_num_threads,
            "LUNGSITE_TORCH_THREADS": os.environ.get("LUNGSITE_TORCH_THREADS"),
            "gunicorn_workers": workers,
        }
        result["serving_backend"] = serving.model.backend
        result["images"] = {"count": len(paths), "folder": str(paths[0].parent), "first": paths[0].name}
        result["reference_export_ms"] = round(export_ms, 1)
        log(
            "%d images; serving backend: %s; reference exported in %.0f ms",
            len(paths),
            result["serving_backend"],
            export_ms,
        )

        forward = inprocess.forward_phase(
            serving_model=serving.model,
            torch_model=torch_model,
            reference=reference,
            tensors=tensors,
            reps=reps,
            log=log,
            architecture=serving.version.architecture,
        )
        result.update(inprocess.forward_ratios(forward))
        s = forward["samples"]
        try:
            api = inprocess.api_phase(
                images=images,
                reference=reference,
                tensors=tensors,
                token=inst.token,
                reps=1 if quick else 2,
                log=log,
            )
        except Exception as exc:  # noqa: BLE001 - reported in the JSON; the other phases still run
            logger.exception("the in-process API phase failed")
            api = {"api": [], "ort": [], "statuses": {}, "error": f"{type(exc).__name__}: {exc}"}
        result["api_p50_over_forward"] = ratio(
            median(api["api"]),
            median(api["ort"]),
            a="POST /api/v1/predictions/ in-process (Django test client, token auth, 1024x1024 PNG), p50",
            b="ONNX Runtime bare forward of the same weights, interleaved with the requests",
        )
        if "error" in api:
            result["api_p50_over_forward"]["error"] = api["error"]

        from bench import profiling

        try:
            result["profile_ms"] = profiling.profile_phase(images=images[:12], token=inst.token, log=log)
        except Exception as exc:  # noqa: BLE001 - reported in the JSON; the other phases still run
            logger.exception("the profiling phase failed")
            result["profile_ms"] = {"error": f"{type(exc).__name__}: {exc}"}

        user = get_user_model().objects.get(username=inst.username)
        stages = inprocess.stages_phase(
            samples=bench_install.format_samples(),
            images=images[:8],
            serving=cache.get_active(),
            user=user,
            repeats=3 if quick else 6,
            log=log,
        )
        for key in (
            "decode_png_1024_in_child_ms",
            "preprocess_ms",
            "heatmap_png_render_ms",
            "audit_write_ms",
            "audit_write_on_request_path_ms",
        ):
            result[key] = stages.pop(key)
        result["stages_cpu_ms"] = stages.pop("cpu_ms_per_call")
        api_p50 = median(api["api"])
        parts = {
            "decode_in_child": result["decode_png_1024_in_child_ms"],
            "preprocess": result["preprocess_ms"],
            "get_active": stages.get("get_active_ms"),
            # The upload's sha256 and the image store run on the storage thread, beside the forward.
            "forward_and_heatmaps": median(s["heatmaps"]),
            "audit_write_on_request_path": result["audit_write_on_request_path_ms"],
        }
        result["api_breakdown_ms"] = {
            "api_p50": api_p50,
            **parts,
            "rest_http_django_drf_serializer": round(api_p50 - sum(v or 0 for v in parts.values()), 3)
            if api_p50
            else None,
        }
        swap = inprocess.swap_phase(first_id=inst.starter_id, second_id=inst.second_id, switches=20, log=log)
        result["swap_back_ms"] = swap["first_get_active_after_switch_ms"]["p50"]

        from bench import int8 as bench_int8

        try:
            result["int8"] = bench_int8.int8_phase(
                version=cache.get_active().version, threads=threads, reps=reps, log=log
            )
        except Exception as exc:  # noqa: BLE001 - reported in the JSON; the other phases still run
            logger.exception("the INT8 phase failed")
            result["int8"] = {"error": f"{type(exc).__name__}: {exc}"}

        server = None
        if not args.no_server:
            arrays = list(tensors)  # preprocess gives numpy arrays
            try:
                server = server_phase(
                    inst=inst,
                    args=args,
                    images=images,
                    reference=reference,
                    reference_graph=reference_graph,
                    arrays=arrays,
                    workers=workers,
                    threads=threads,
                    quick=quick,
                )
            except Exception as exc:  # noqa: BLE001 - reported in the JSON
                logger.exception("the gunicorn phase failed")
                result["server_error"] = f"{type(exc).__name__}: {exc}"
        if server is not None:
            server["collectstatic_s"] = round(static_s, 1)
            result["throughput_c4_over_loop"] = server.pop("throughput_c4_over_loop")
            result["throughput_c4_over_parallel_loop"] = server.pop("throughput_c4_over_parallel_loop")
            result["swap_failed_requests"] = server["swap"]["failed"]
            one, two = server["memory_one_model"], server["memory_two_models"]
            result["memory_mb"] = {
                "worker_peak_rss_one_model": max((m.get("VmHWM", 0) for m in one), default=None),
                "worker_peak_rss_two_models": max((m.get("VmHWM", 0) for m in two), default=None),
                "worker_rss_one_model": max((m.get("VmRSS", 0) for m in one), default=None),
                "worker_rss_two_models": max((m.get("VmRSS", 0) for m in two), default=None),
                "worker_uss_one_model": max((m.get("USS", 0) for m in one), default=None),
                "worker_uss_two_models": max((m.get("USS", 0) for m in two), default=None),
                "worker_rss_after_largest_images": max(
                    (m.get("VmRSS", 0) for m in server["memory_after_largest_images"]), default=None
                ),
                "worker_peak_rss_after_largest_images": max(
                    (m.get("VmHWM", 0) for m in server["memory_after_largest_images"]), default=None
                ),
                "per_worker": {"one_model": one, "two_models": two},
                "fresh_interpreter_peak": bench_memory.baseline(full=not quick),
            }
            result["api_gunicorn_one_client_p50_ms"] = server["one_client"]["p50"]
            result["api_gunicorn_one_client_over_forward"] = server.pop(
                "api_gunicorn_one_client_over_forward"
            )
            result["server"] = server
            forward_cpu = result["stages_cpu_ms"].get("forward_and_heatmaps")
            result["cpu_per_request_over_forward_cpu"] = ratio(
                server["c4"]["cpu_ms_per_request"]["gunicorn_workers"],
                forward_cpu,
                a="CPU ms per request of the gunicorn workers and their decoding processes, 4 clients",
                b="CPU ms of one serving forward (logits + all maps), in-process, same threads",
            )

        result["details"] = {
            "forward_ms": {name: spread(values) for name, values in s.items()},
            "torch_eager_over_onnxruntime": ratio(median(s["torch_eager"]), median(s["ort"])),
            "serving_matches_reference": {
                "max_abs_probability_diff": forward["max_abs_probability_diff"],
                "max_abs_normalised_cam_diff": forward["max_abs_normalised_cam_diff"],
            },
            "api_in_process_ms": spread(api["api"]),
            "api_statuses": api["statuses"],
            "stages_ms": stages,
            "swap_in_process": swap,
            "model_load_ms": swap["load_ms"],
        }
        result["definitions"] = {
            "swap_back_ms": "median over 20 switches of the first registry.cache.get_active() after "
            "activating a version that is still loaded (includes its one indexed query), in-process; "
            "details.swap_in_process.steady_get_active_ms is the same call without a switch",
            "swap_failed_requests": "responses that were not 201 (or named neither version) among all "
            "requests made by concurrent clients on gunicorn during the activations (each one a "
            "POST /api/v1/models/<id>/activate/ on the same server)",
            "bare forward": "ONNX Runtime InferenceSession of the active weights exported by torch.onnx "
            "(logits only), batch 1, 224x224, same intra-op threads as the serving runtime",
            "memory_mb": "VmHWM (peak RSS), VmRSS and USS (unshared pages) of each gunicorn worker after the "
            "single-model phases, then after the swaps (both versions loaded, 20 activations run by the "
            "workers themselves); fresh_interpreter_peak: "
            "VmHWM of a bare `python -c 'import torch'` (what any worker importing torch starts from)",
            "timings": "time.perf_counter around each call; medians; a and b of each ratio measured "
            "interleaved in the same loop of the same run",
        }
    finally:
        if not args.keep:
            shutil.rmtree(inst.data_dir, ignore_errors=True)
        else:
            result["data_dir"] = str(inst.data_dir)

    result["targets"] = targets_met(result)
    result["machine"]["load_avg_at_end"] = [round(v, 2) for v in os.getloadavg()]
    result["elapsed_s"] = round(time.perf_counter() - started, 1)
    print(json.dumps(result, indent=1, default=str))
    return 0


def targets_met(result: dict) -> dict:
    def value(key):
        item = result.get(key)
        return item.get("ratio") if isinstance(item, dict) else item

    out = {}
    peak = (result.get("memory_mb") or {}).get("worker_peak_rss_one_model")
    out[f"worker_peak_rss_one_model_under_{WORKER_PEAK_RSS_MB}_mb"] = (
        None if peak is None else peak < WORKER_PEAK_RSS_MB
    )
    after = (result.get("memory_mb") or {}).get("worker_rss_after_largest_images")
    out["worker_rss_after_largest_images_under_1024_mb"] = None if after is None else after < 1024
    for key, target in TARGETS.items():
        v = value(key)
        if v is None:
            out[key] = None
        elif key == "throughput_c4_over_loop":
            # Unknown rather than met when even the loop's best run was disturbed (see server_phase).
            out[key] = None if result[key].get("loop_disturbed") else v >= target
        elif key == "swap_failed_requests":
            out[key] = v == target
        else:
            out[key] = v <= target
    return out


if __name__ == "__main__":
    sys.exit(main())
