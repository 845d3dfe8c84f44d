"""Where a request's time goes, by pyinstrument (a sampling profiler) rather than by timers placed in
the code: POST /api/v1/predictions/ in-process, then the first fetch of a heatmap PNG (rendered then,
off the request path). Reported as ms per request for each stage named in STAGES."""

from __future__ import annotations

# stage -> (function name, end of its file path) as pyinstrument records the frame
STAGES = {
    "decode": ("decode_gray", "engine/decode_pool.py"),  # the wait for the decoding process
    "preprocess": ("preprocess", "engine/pipeline.py"),
    "forward_and_heatmaps": ("predict", "engine/pipeline.py"),
    "get_active": ("get_active", "registry/cache.py"),
    "audit_row_write": ("prediction_log", "audit/services.py"),
    "wait_for_image_store": ("result", "concurrent/futures/_base.py"),
    "request_parse": ("_load_data_and_files", "rest_framework/request.py"),
    "authentication": ("perform_authentication", "rest_framework/views.py"),
    "permissions": ("check_permissions", "rest_framework/views.py"),
    "response_serializer": ("data", "rest_framework/serializers.py"),
}
HEATMAP_STAGES = {
    "heatmap_png_first_fetch": ("heatmap_png", "audit/services.py"),
    "heatmap_png_render": ("heatmap_overlay_png", "engine/heatmaps.py"),
    "heatmap_png_encode": ("save", "PIL/Image.py"),
    "heatmap_stored_image_decode": ("decode", "engine/decode.py"),
}


def _stage_seconds(frame, stages: dict, totals: dict, inside: frozenset = frozenset()) -> None:
    """Adds each frame's time to its stage, outermost call only (a recursive or nested call of the
    same stage is not counted twice)."""
    for stage, (function, path) in stages.items():
        if stage not in inside and frame.function == function and (frame.file_path or "").endswith(path):
            totals[stage] = totals.get(stage, 0.0) + frame.time
            inside = inside | {stage}
    for child in frame.children:
        _stage_seconds(child, stages, totals, inside)


def profiled(calls, stages: dict, *, interval: float = 0.0005) -> dict:
    """Runs every callable in `calls` under pyinstrument; returns {stage: ms per call} and the
    total, or {"error": ...} when pyinstrument is not installed (requirements-dev.txt)."""
    try:
        from pyinstrument import Profiler
    except ImportError:
        return {"error": "pyinstrument is not installed (pip install -r requirements-dev.txt)"}
    profiler = Profiler(interval=interval, async_mode="disabled")
    profiler.start()
    for call in calls:
        call()
    session = profiler.stop()
    root = session.root_frame()
    totals: dict[str, float] = {}
    if root is not None:
        _stage_seconds(root, stages, totals)
    n = max(1, len(calls))
    out = {stage: round(totals.get(stage, 0.0) * 1000 / n, 3) for stage in stages}
    out["total_per_call"] = round(session.duration * 1000 / n, 3)
    out["calls"] = len(calls)
    out["sample_interval_ms"] = interval * 1000
    return out


def profile_phase(*, images: list[bytes], token: str, log) -> dict:
    """pyinstrument over len(images) API requests, then over the first fetch of one heatmap of each
    new prediction. The storage thread (image_store) is not sampled: it overlaps the forward, and
    `wait_for_image_store` is what the request waits for it, if anything."""
    from django.core.files.uploadedfile import SimpleUploadedFile
    from rest_framework.test import APIClient

    client = APIClient(HTTP_HOST="127.0.0.1")
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    created: list[dict] = []

    def post(i: int):
        def call():
            upload = SimpleUploadedFile(f"image{i}.png", images[i], content_type="image/png")
            response = client.post("/api/v1/predictions/", {"image": upload}, format="multipart")
            if response.status_code != 201:
                raise RuntimeError(f"API answered {response.status_code}: {response.content[:300]!r}")
            created.append(response.json())

        return call

    def fetch(url: str):
        def call():
            response = client.get(url)
            if response.status_code != 200:
                raise RuntimeError(f"heatmap fetch answered {response.status_code}")

        return call

    post(0)()  # warm
    request = profiled([post(i) for i in range(len(images))], STAGES)
    urls = [next(iter(body["heatmaps"].values())) for body in created[1:]]
    heatmaps = profiled([fetch(url) for url in urls], HEATMAP_STAGES)
    log(
        "profile (pyinstrument): request %.1f ms = decode %.1f + preprocess %.1f + forward %.1f + "
        "audit row %.1f + ...; heatmap first fetch %.1f ms",
        request.get("total_per_call", -1),
        request.get("decode", -1),
        request.get("preprocess", -1),
        request.get("forward_and_heatmaps", -1),
        request.get("audit_row_write", -1),
        heatmaps.get("heatmap_png_first_fetch", -1),
    )
    return {"api_request": request, "heatmap_first_fetch": heatmaps}
