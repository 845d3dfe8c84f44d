"""Measurements inside the benchmark's own process (Django set up by bench.install).

Every ratio divides two timings taken side by side in the same loop (interleaved, order rotated),
so a neighbour that slows the machine down slows both."""

from __future__ import annotations

import io
import time
import warnings
from contextlib import contextmanager

import numpy as np

from bench.timing import CpuClock, median, ratio, spread, timed_cpu_ms, timed_ms

# --------------------------------------------------------------------------------------------
# The reference: ONNX Runtime on the same weights, exported by torch


def reference_session(model, input_size: int, threads: int):
    """ONNX Runtime's bare forward of `model` (logits only), exported by torch's TorchScript-based
    exporter (`dynamo=False`: the default dynamo exporter needs onnxscript, which is not installed)
    and run with ORT's default options at `threads` intra-op threads, one inter-op thread.
    Returns (session, the ONNX bytes, export_ms)."""
    import torch

    started = time.perf_counter()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            (torch.zeros(1, 3, input_size, input_size),),
            buffer,
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            opset_version=17,
        )
    export_ms = (time.perf_counter() - started) * 1000
    return open_reference(buffer.getvalue(), threads), buffer.getvalue(), export_ms


def open_reference(graph: bytes, threads: int | None):
    """An ONNX Runtime session with its default options but `threads` intra-op threads (None: ORT's
    default, one per core) and one inter-op thread."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])


def _rotations(names: list[str], index: int) -> list[str]:
    shift = index % len(names)
    return names[shift:] + names[:shift]


# --------------------------------------------------------------------------------------------
# Forward passes and heatmaps


def forward_phase(
    *, serving_model, torch_model, reference, tensors, reps: int, log, architecture: str
) -> dict:
    """Interleaved timings of: ONNX Runtime's bare forward (the reference), the serving runtime's
    forward (ServingRuntime.run: logits + every finding's map), `pipeline.predict` on the serving
    model (that forward plus all findings' heatmaps) and, less often, torch's eager forward.
    Also checks that the serving path gives the torch reference's probabilities and maps."""
    import torch

    from engine.heatmaps import cams_normalised
    from engine.pipeline import predict

    arrays = [np.asarray(t) for t in tensors]

    def ort_forward(i):
        reference.run(None, {"input": arrays[i]})

    def serving_forward(i):
        serving_model.run(tensors[i])

    def heatmaps(i):
        predict(serving_model, tensors[i])

    def torch_eager(i):
        with torch.inference_mode():
            torch_model(torch.from_numpy(tensors[i]))

    functions = {"ort": ort_forward, "serving_forward": serving_forward, "heatmaps": heatmaps}
    for i in range(min(3, len(tensors))):  # warm-up (ORT allocates its arena on the first runs)
        for fn in (*functions.values(), torch_eager):
            fn(i)
    samples: dict[str, list[float]] = {name: [] for name in (*functions, "torch_eager")}
    step = 0
    for rep in range(reps):
        for i in range(len(tensors)):
            for name in _rotations(list(functions), step):
                samples[name].append(timed_ms(functions[name], i))
            if rep == 0 and i % 2 == 0:  # torch eager is context only: every other image, first rep
                samples["torch_eager"].append(timed_ms(torch_eager, i))
            step += 1
    log(
        "forward: ort %.1f ms, serving (logits + maps) %.1f ms, +heatmaps %.1f ms, torch eager %.1f ms",
        median(samples["ort"]),
        median(samples["serving_forward"]),
        median(samples["heatmaps"]),
        median(samples["torch_eager"]),
    )

    # The serving path against the exported module run in torch (what the Grad-CAM tests check).
    from engine.export import ServingModule

    reference_module = ServingModule(torch_model, architecture)
    prob_diff, cam_diff = 0.0, 0.0
    for tensor in tensors[:4]:
        served = predict(serving_model, tensor)
        with torch.inference_mode():
            logits, cams, _ = reference_module(torch.from_numpy(tensor))
        probabilities, cams = torch.sigmoid(logits)[0].numpy(), cams[0].numpy()
        prob_diff = max(prob_diff, float(np.abs(served.probabilities - probabilities).max()))
        cam_diff = max(cam_diff, float(np.abs(cams_normalised(served.cams) - cams_normalised(cams)).max()))
    return {
        "samples": samples,
        "max_abs_probability_diff": prob_diff,
        "max_abs_normalised_cam_diff": cam_diff,
    }


# --------------------------------------------------------------------------------------------
# The API in-process, one client


def api_phase(*, images: list[bytes], reference, tensors, token: str, reps: int, log) -> dict:
    """POST /api/v1/predictions/ through Django's test client (token auth, real multipart upload
    of a 1024x1024 PNG, the whole request: middleware, auth, throttle, service, audit write,
    response), interleaved with ONNX Runtime's bare forward on the same image's tensor."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    arrays = [np.asarray(t) for t in tensors]
    statuses: dict[int, int] = {}

    def post(i):
        upload = SimpleUploadedFile(f"image{i}.png", images[i], content_type="image/png")
        response = client.post("/api/v1/predictions/", {"image": upload}, format="multipart")
        statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
        if response.status_code != 201:
            raise RuntimeError(f"API answered {response.status_code}: {response.content[:300]!r}")

    def ort_forward(i):
        reference.run(None, {"input": arrays[i]})

    for i in range(min(2, len(images))):
        post(i)
        ort_forward(i)
    api, ort = [], []
    for rep in range(reps):
        for i in range(len(images)):
            if (i + rep) % 2:
                api.append(timed_ms(post, i))
                ort.append(timed_ms(ort_forward, i))
            else:
                ort.append(timed_ms(ort_forward, i))
                api.append(timed_ms(post, i))
    log("api in-process: p50 %.1f ms, ort %.1f ms", median(api), median(ort))
    return {"api": api, "ort": ort, "statuses": statuses}


# --------------------------------------------------------------------------------------------
# Work off the forward pass: decode, preprocess, audit write, heatmap PNGs


def stages_phase(*, samples: dict, images: list[bytes], serving, user, repeats: int, log) -> dict:
    """Each stage of a request timed on its own (perf_counter, medians): decoding every format,
    preprocessing, hashing, encoding the stored image, the audit write, get_active(),
    and rendering heatmap PNGs (off the request path: on first fetch)."""
    import hashlib

    from django.conf import settings

    from analysis.results import results_json
    from audit import services as audit_services
    from engine import decode as decoding
    from engine import decode_pool, stored_image
    from engine.heatmaps import heatmap_overlay_png
    from engine.pipeline import predict, preprocess
    from registry import cache
    from registry.models import DEFAULT_PREPROCESSING

    def decode(data: bytes):  # what a request runs: the decoding process, bounded as configured
        return decode_pool.decode_gray(
            data,
            timeout_s=settings.LUNGSITE_DECODE_TIMEOUT_S,
            max_mb=settings.LUNGSITE_DECODE_MAX_MB,
            max_pixels=settings.LUNGSITE_MAX_PIXELS,
        )

    def decode_and_copy(data: bytes):  # the same child then writes the stored copy's PNG
        pixels, copy = decode_pool.decode_with_stored_copy(
            data,
            timeout_s=settings.LUNGSITE_DECODE_TIMEOUT_S,
            max_mb=settings.LUNGSITE_DECODE_MAX_MB,
            max_pixels=settings.LUNGSITE_MAX_PIXELS,
        )
        return pixels, copy.result()

    out: dict = {}
    decode_ms = {}
    for name, path in samples.items():
        data = path.read_bytes()
        decode(data)
        decode_ms[name] = median([timed_ms(decode, data) for _ in range(repeats)])
    out["decode_in_child_ms_by_format"] = decode_ms

    # CPU per stage (this process and its decoding children; psutil counts a child's CPU in 10 ms
    # ticks, so each figure is the total over all calls divided by their number).
    clock = CpuClock()
    cpu: dict[str, float] = {}

    def cpu_per_call(name: str, fn, calls) -> list[float]:
        clock.refresh()
        walls, total = [], 0.0
        for args in calls:
            wall, used = timed_cpu_ms(clock, fn, *args)
            walls.append(wall)
            total += used
        cpu[name] = round(total / max(1, len(walls)), 3)
        return walls

    decoded = [decode(data) for data in images]
    spec = serving.version.preprocessing or DEFAULT_PREPROCESSING
    # Interleaved, so that both see the same machine: the request's decode (in the decoding child
    # process, the pipe both ways included) and the same decoder called in this process.
    in_child_ms, in_process_ms = [], []
    for data in images:
        in_child_ms.append(timed_ms(decode, data))
        in_process_ms.append(timed_ms(decoding.decode_gray, data))
    out["decode_png_1024_in_child_ms"] = median(in_child_ms)
    out["decode_png_1024_in_process_ms"] = median(in_process_ms)
    out["decode_child_overhead_ms"] = round(
        out["decode_png_1024_in_child_ms"] - out["decode_png_1024_in_process_ms"], 3
    )
    calls = [(data,) for data in images] * repeats
    cpu_per_call("decode_png_1024_in_child", decode, calls)
    out["decode_and_stored_copy_png_1024_in_child_ms"] = median(
        cpu_per_call("decode_and_stored_copy_png_1024_in_child", decode_and_copy, calls)
    )
    copies = [decode_and_copy(data)[1] for data in images]
    out["preprocess_ms"] = median(
        cpu_per_call("preprocess", preprocess, [(image, spec) for image in decoded])
    )
    out["sha256_upload_ms"] = median(
        cpu_per_call("sha256_upload", hashlib.sha256, [(data,) for data in images])
    )
    out["get_active_ms"] = median(cpu_per_call("get_active", cache.get_active, [()] * (repeats * 4)))
    tensors = [preprocess(image, spec) for image in decoded]
    out["forward_and_heatmaps_ms"] = median(
        cpu_per_call("forward_and_heatmaps", predict, [(serving.model, t) for t in tensors] * repeats)
    )

    # The stored copy, a PNG written from the decoded pixels (by the decoding process, in the
    # request's decode): 8-bit for the 1024x1024 PNGs, 16-bit for a CR plate. Timed here in-process.
    out["stored_image_png_1024_ms"] = median(
        cpu_per_call("stored_image_png_1024", stored_image.png_bytes, [(image,) for image in decoded])
    )
    if "dicom_cr_1955x1841" in samples:
        big = decode(samples["dicom_cr_1955x1841"].read_bytes())
        out["stored_image_dicom_cr_ms"] = median([timed_ms(stored_image.png_bytes, big) for _ in range(2)])

    outputs = [predict(serving.model, t) for t in tensors[:repeats]]
    # The audit write in two parts: storing the image (and hashing it), which a request runs on its
    # storage thread while the model runs, and the row (hash chain + insert), which it waits for.
    store_ms, row_ms, rows = [], [], []
    store_cpu, row_cpu = 0.0, 0.0
    for data, image, png, output in zip(images, decoded, copies, outputs, strict=False):
        started, cpu_started = time.perf_counter(), time.process_time()
        stored = audit_services.image_store(data=data, image=image, png=png)
        stored_at, cpu_stored = time.perf_counter(), time.process_time()
        row = audit_services.prediction_log(
            version=serving.version,
            data=data,
            image=image,
            results=results_json(version=serving.version, probabilities=output.probabilities),
            cams=output.cams,
            image_sha256=hashlib.sha256(data).hexdigest(),
            user=user,
            source="api",
            started=started,
            stored=stored,
        )
        store_ms.append((stored_at - started) * 1000)
        row_ms.append((time.perf_counter() - stored_at) * 1000)
        store_cpu += cpu_stored - cpu_started
        row_cpu += time.process_time() - cpu_stored
        rows.append(row)
    out["image_store_ms"] = median(store_ms)
    out["audit_write_on_request_path_ms"] = median(row_ms)
    out["audit_write_ms"] = median([a + b for a, b in zip(store_ms, row_ms, strict=True)])
    cpu["image_store"] = round(store_cpu * 1000 / max(1, len(rows)), 3)
    cpu["audit_row"] = round(row_cpu * 1000 / max(1, len(rows)), 3)

    name = serving.version.class_names[0]
    out["heatmap_png_render_ms"] = median(
        [
            timed_ms(heatmap_overlay_png, image, output.cams[0])
            for image, output in zip([decoding.as_float(d) for d in decoded], outputs, strict=False)
        ]
    )
    clock.refresh()
    first, total = [], 0.0
    for row in rows:
        wall, used = timed_cpu_ms(clock, audit_services.heatmap_png, prediction=row, name=name)
        first.append(wall)
        total += used
    cpu["heatmap_png_first_fetch"] = round(total / max(1, len(rows)), 3)
    again = [timed_ms(audit_services.heatmap_png, prediction=row, name=name) for row in rows]
    out["heatmap_png_first_fetch_ms"] = median(first)
    out["heatmap_png_cached_fetch_ms"] = median(again)
    out["cpu_ms_per_call"] = cpu
    log(
        "stages: decode (child process) %.1f, preprocess %.1f, audit write %.1f (%.1f on the request path), "
        "heatmap render %.1f ms",
        out["decode_png_1024_in_child_ms"],
        out["preprocess_ms"],
        out["audit_write_ms"],
        out["audit_write_on_request_path_ms"],
        out["heatmap_png_render_ms"],
    )
    return out


# --------------------------------------------------------------------------------------------
# Load and swap back, in-process


@contextmanager
def _activation_without_load_check():
    """model_version_activate loads the weights once to refuse a broken file; that check runs in
    the activating process, not on the serving path, so it is skipped while timing the cache."""
    from registry import services

    original = services._check_loadable
    services._check_loadable = lambda version: None
    try:
        yield
    finally:
        services._check_loadable = original


def swap_phase(*, first_id: int, second_id: int, switches: int, log) -> dict:
    """The cache's own cost of a swap: the first get_active() after switching to a version that is
    still loaded (median over `switches` switches), against a steady get_active() (one indexed
    query either way); and the cost of loading a version not yet loaded (its stored serving graph
    read + verified, and an ONNX Runtime session opened on it)."""
    from registry import cache
    from registry.models import ModelVersion
    from registry.services import model_version_activate

    versions = {v.pk: v for v in ModelVersion.objects.filter(pk__in=[first_id, second_id])}
    load_ms, build_ms = [], []
    for pk in (first_id, second_id):
        started = time.perf_counter()
        entry = cache._load(versions[pk])
        load_ms.append((time.perf_counter() - started) * 1000)
        build_ms.append(entry.model.build_ms)

    cache.clear()
    with _activation_without_load_check():
        model_version_activate(version=versions[first_id], via="command")
        cache.get_active()
        model_version_activate(version=versions[second_id], via="command")
        cache.get_active()  # both loaded now
        first_call, steady = [], []
        for i in range(switches):
            target = versions[first_id] if i % 2 == 0 else versions[second_id]
            model_version_activate(version=target, via="command")
            started = time.perf_counter()
            serving = cache.get_active()
            first_call.append((time.perf_counter() - started) * 1000)
            if serving.version.pk != target.pk:
                raise RuntimeError("the cache did not switch to the activated version")
            steady.append(timed_ms(cache.get_active))
        model_version_activate(version=versions[first_id], via="command")
    cache.get_active()
    log("swap back in-process: first get_active %.2f ms, steady %.2f ms", median(first_call), median(steady))
    return {
        "load_ms": [round(v, 1) for v in load_ms],
        "of_which_serving_runtime_build_ms": [round(v, 1) for v in build_ms],
        "first_get_active_after_switch_ms": spread(first_call),
        "steady_get_active_ms": spread(steady),
    }


def forward_ratios(forward: dict) -> dict:
    s = forward["samples"]
    return {
        "heatmaps_over_forward": ratio(
            median(s["heatmaps"]),
            median(s["ort"]),
            a="pipeline.predict on the serving model: one forward + the heatmaps of all findings",
            b="ONNX Runtime bare forward (logits only) of the same weights",
        ),
        "forward_over_onnxruntime": ratio(
            median(s["serving_forward"]),
            median(s["ort"]),
            a="serving forward (ServingRuntime.run: logits + every finding's map, one ONNX Runtime run)",
            b="ONNX Runtime bare forward of the same weights exported by torch.onnx (dynamo=False)",
        ),
    }
