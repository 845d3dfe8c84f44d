"""The byte form of a chain-version-2 row's heatmaps (Prediction.heatmap_data), which the chain
hashes as bytes.

Layout (little-endian): b"CAM8", then K, h, w as uint16, then K float32 scales, then the K maps as
uint8 (K x h x w, findings in results_json order). A map's value is its byte times its scale; the
scale is the map's maximum / 255, so each map keeps 8 bits of its own range (about 0.2 % of its
peak, finer than a colour map can show). 13 maps of 7x7: 698 bytes, which keeps a row inline in
its Postgres page (the float16 .npy form was 1,402 bytes and went to TOAST).
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # numpy loads with the first prediction: `manage.py check/migrate` never pay for it
    import numpy as np

MAGIC = b"CAM8"
_HEADER = struct.Struct("<4sHHH")


def heatmaps_encode(cams: np.ndarray) -> bytes:
    """(K, h, w) raw Grad-CAM maps -> the stored bytes. Negative values become 0: the pipeline's
    maps are ReLU'd already and the heat layer applies ReLU before showing one. Non-finite values
    are refused (ValueError)."""
    import numpy as np

    maps = np.asarray(cams, dtype=np.float32)
    if maps.ndim != 3:
        raise ValueError(f"heatmaps must be (K, h, w), not {maps.shape}")
    if not np.isfinite(maps).all():
        raise ValueError("non-finite number in an audit row's heatmaps")
    maps = np.maximum(maps, 0)
    scales = (maps.reshape(len(maps), -1).max(axis=1, initial=0) / 255).astype(np.float32)
    safe = np.where(scales > 0, scales, 1).astype(np.float32)
    levels = np.clip(np.rint(maps / safe[:, None, None]), 0, 255).astype(np.uint8)
    return _HEADER.pack(MAGIC, *maps.shape) + scales.astype("<f4").tobytes() + levels.tobytes()


def heatmaps_decode(data: bytes) -> np.ndarray:
    """The stored bytes -> (K, h, w) float32 maps. ValueError for bytes not in this layout."""
    import numpy as np

    data = bytes(data)
    if len(data) < _HEADER.size:
        raise ValueError("heatmap bytes too short")
    magic, k, h, w = _HEADER.unpack_from(data)
    if magic != MAGIC or len(data) != _HEADER.size + 4 * k + k * h * w:
        raise ValueError("heatmap bytes are not in the CAM8 layout")
    scales = np.frombuffer(data, dtype="<f4", count=k, offset=_HEADER.size).astype(np.float32)
    levels = np.frombuffer(data, dtype=np.uint8, offset=_HEADER.size + 4 * k).reshape(k, h, w)
    return levels.astype(np.float32) * scales[:, None, None]
