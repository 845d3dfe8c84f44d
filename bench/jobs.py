"""Batch jobs: a job's images per second on real Celery workers against the bare batched forward
loop in the same run, and two workers against one.

    python bench/jobs.py [--images 24] [--batch 8]

Starts its own scratch data folder (SQLite and local storage, or DATABASE_URL), registers the
starter model, and one, then two, `celery worker --pool=solo -c 1` processes on Redis
(LUNGSITE_BENCH_BROKER_URL, default redis://127.0.0.1:6379/2). Prints one JSON object. The bare
loop runs `engine.pipeline.predict_batch` on already preprocessed batches in this process; the
job's time runs from `job_create` returning to the job's state being done (decode, preprocess,
forward, storage and audit rows included; worker start-up and the model load excluded by a warm-up
job)."""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IMAGES = ROOT.parent / "shared" / "data" / "nih_reproduce_chexnet" / "images"


def _setup(data_dir: str, broker: str, queue: str, batch: int) -> dict:
    env = {
        "LUNGSITE_DATA_DIR": data_dir,
        "LUNGSITE_BROKER_URL": broker,
        "LUNGSITE_JOBS_QUEUE": queue,
        "LUNGSITE_BATCH_SIZE": str(batch),
        "DJANGO_HTTPS": "0",
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "lungsite.settings",
    }
    os.environ.update(env)
    sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", verbosity=0)
    call_command("bootstrap", verbosity=0)
    return dict(os.environ)


def _start_worker(name: str, env: dict, queue: str, log_dir: Path) -> tuple[subprocess.Popen, Path]:
    log = log_dir / f"{name}.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "celery", "-A", "lungsite", "worker", "--pool=solo", "-c", "1",
         "--prefetch-multiplier", "1", "-n", f"{name}@%h", "-Q", queue, "-l", "info",
         "--without-gossip", "--without-mingle", "--without-heartbeat"],
        cwd=ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while " ready." not in log.read_text():
        if time.monotonic() > deadline or process.poll() is not None:
            raise RuntimeError(f"worker {name} did not start: {log.read_text()[-2000:]}")
        time.sleep(0.2)
    return process, log


def _run_job(files: list[tuple[str, bytes]]) -> float:
    """Seconds from submission to the job's end."""
    from jobs.models import PredictionJob
    from jobs.services import job_create

    started = time.perf_counter()
    job = job_create(user=None, source="command", files=files)
    while job.state in (PredictionJob.STATE_QUEUED, PredictionJob.STATE_RUNNING):
        time.sleep(0.05)
        job.refresh_from_db()
    elapsed = time.perf_counter() - started
    if job.done != len(files):
        raise RuntimeError(f"job {job.pk}: {job.done} of {len(files)} logged ({job.failed} failed)")
    return elapsed


def _bare_batched(files: list[tuple[str, bytes]], batch: int, repeats: int) -> float:
    """Seconds per pass of predict_batch over all images, already preprocessed (median)."""
    import numpy as np

    from engine.decode import decode_gray
    from engine.pipeline import predict_batch, preprocess
    from registry.cache import get_active

    serving = get_active()
    tensors = np.concatenate(
        [preprocess(decode_gray(data), serving.version.preprocessing) for _, data in files]
    )
    predict_batch(serving.model, tensors[:batch])  # warm-up
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(tensors), batch):
            predict_batch(serving.model, tensors[start : start + batch])
        times.append(time.perf_counter() - started)
    return sorted(times)[len(times) // 2]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    paths = sorted(IMAGES.glob("*.png"))[: args.images]
    if len(paths) < args.images:
        print(json.dumps({"error": f"needs {args.images} NIH PNGs under {IMAGES}"}))
        return 1
    files = [(p.name, p.read_bytes()) for p in paths]
    broker = os.environ.get("LUNGSITE_BENCH_BROKER_URL", "redis://127.0.0.1:6379/2")
    queue = f"lungsite-bench-{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory(prefix="lungsite-bench-jobs-") as data_dir:
        env = _setup(data_dir, broker, queue, args.batch)
        workers = []
        try:
            workers.append(_start_worker("bench1", env, queue, Path(data_dir)))
            _run_job(files[: args.batch])  # the worker loads the model
            bare = [_bare_batched(files, args.batch, args.repeats) for _ in range(1)][0]
            one = [_run_job(files) for _ in range(args.repeats)]
            bare_after = _bare_batched(files, args.batch, args.repeats)
            workers.append(_start_worker("bench2", env, queue, Path(data_dir)))
            _run_job(files[: args.batch * 2])  # the second worker loads the model
            two = [_run_job(files) for _ in range(args.repeats)]
        finally:
            for process, _ in workers:
                process.terminate()
                process.wait(timeout=30)
        tasks = {
            name: len(re.findall(r"\] succeeded", log.read_text()))
            for (_, log), name in zip(workers, ("w1", "w2"), strict=False)
        }
    n = len(files)
    bare_s = min(bare, bare_after)
    one_s, two_s = min(one), min(two)
    result = {
        "images": n,
        "batch_size": args.batch,
        "cores": len(os.sched_getaffinity(0)),
        "bare_batched_forward_images_per_s": round(n / bare_s, 2),
        "job_one_worker_images_per_s": round(n / one_s, 2),
        "job_two_workers_images_per_s": round(n / two_s, 2),
        "ratio_job_one_worker_over_bare": round(bare_s / one_s, 3),
        "ratio_two_workers_over_one": round(one_s / two_s, 3),
        "seconds": {"bare": [round(bare, 3), round(bare_after, 3)], "one_worker": one, "two_workers": two},
        "tasks_succeeded_per_worker": tasks,
    }
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
