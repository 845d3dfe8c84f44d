"""A gunicorn worker's memory after the largest images the decoder accepts: a 60-megapixel JPEG
(8-bit) and 16-bit PNG posted to the API, then each one's thumbnail, viewer pixels and a heatmap
fetched, as a person opening the result would. Memory is read by the caller (Server.worker_memory_mb)."""

from __future__ import annotations

import http.client
import io
import json

import numpy as np

from bench.server import REQUEST_TIMEOUT_S, multipart

SIDE = 7745  # 7745 x 7745 = 59.98 Mpx, under LUNGSITE_MAX_PIXELS (60 Mpx)


def largest_images(path) -> dict[str, bytes]:
    """A real NIH X-ray enlarged to SIDE x SIDE: as a JPEG and as a 16-bit PNG (each level * 257)."""
    from PIL import Image

    with Image.open(path) as source:
        big = source.convert("L").resize((SIDE, SIDE), Image.Resampling.BILINEAR)
    jpeg, png = io.BytesIO(), io.BytesIO()
    big.save(jpeg, format="JPEG", quality=90)
    Image.fromarray(np.asarray(big).astype(np.uint16) * np.uint16(257)).save(
        png, format="PNG", compress_level=6
    )
    return {"jpeg_60mpx_8bit": jpeg.getvalue(), "png_60mpx_16bit": png.getvalue()}


def _request(
    port: int, method: str, path: str, headers: dict, body: bytes | None = None
) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=REQUEST_TIMEOUT_S * 2)
    try:
        conn.request(method, path, body=body, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def largest_phase(*, port: int, token: str, username: str, images: dict[str, bytes], log) -> dict:
    from django.contrib.auth import get_user_model
    from django.test import Client

    browser = Client()
    browser.force_login(get_user_model().objects.get(username=username))
    cookie = {"Cookie": f"sessionid={browser.cookies['sessionid'].value}"}
    out = {}
    for name, data in images.items():
        body, content_type = multipart(data, f"{name}.bin")
        status, answer = _request(
            port,
            "POST",
            "/api/v1/predictions/",
            {"Content-Type": content_type, "Authorization": f"Token {token}"},
            body,
        )
        entry = {"upload_mb": round(len(data) / 2**20, 1), "status": status}
        if status == 201:
            result = json.loads(answer)
            pk = result["id"]
            heatmap = next(iter(result["heatmaps"].values()))
            path = heatmap.split("//", 1)[-1].split("/", 1)[-1]
            entry["heatmap_status"] = _request(port, "GET", "/" + path, {"Authorization": f"Token {token}"})[
                0
            ]
            entry["thumbnail_status"] = _request(port, "GET", f"/predictions/{pk}/thumbnail.jpg", cookie)[0]
            entry["pixels_status"] = _request(port, "GET", f"/predictions/{pk}/pixels", cookie)[0]
        else:
            entry["error"] = answer[:300].decode("utf-8", "replace")
        out[name] = entry
        log("largest image %s: %s", name, entry)
    return out
