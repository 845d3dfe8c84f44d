"""Peak RSS of a fresh interpreter after some imports: what a serving worker pays before any model."""

from __future__ import annotations

import subprocess
import sys

_REPORT = (
    "import json\n"
    "status = dict(line.split(':', 1) for line in open('/proc/self/status') if ':' in line)\n"
    "print(json.dumps(round(int(status['VmHWM'].split()[0]) / 1024, 1)))\n"
)


def import_peak_mb(statement: str, timeout_s: float = 120) -> float | None:
    """VmHWM in MB of `python -c statement` (None when it fails)."""
    try:
        done = subprocess.run(
            [sys.executable, "-c", statement + "\n" + _REPORT],
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=True,
        )
        return float(done.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError):
        return None


def baseline(full: bool) -> dict:
    out = {"python": import_peak_mb("pass"), "import_torch": import_peak_mb("import torch")}
    if full:
        out["import_torch_torchvision"] = import_peak_mb("import torch, torchvision")
        out["import_onnxruntime_numpy_pil"] = import_peak_mb("import numpy, onnxruntime, PIL.Image")
    return out
