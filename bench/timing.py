"""Small timing helpers: wall-clock milliseconds, medians, and the ratio objects the benchmark prints."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable


def timed_ms(fn: Callable, *args, **kwargs) -> float:
    started = time.perf_counter()
    fn(*args, **kwargs)
    return (time.perf_counter() - started) * 1000.0


def median(values) -> float | None:
    values = [v for v in values if v is not None]
    return round(statistics.median(values), 3) if values else None


def percentile(values, q: float) -> float | None:
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    index = min(len(values) - 1, max(0, round(q * (len(values) - 1))))
    return round(values[index], 3)


def ratio(a_ms: float | None, b_ms: float | None, **extra) -> dict:
    """{"ratio": a/b, "a_ms": a, "b_ms": b} (+ extra keys, e.g. what a and b are)."""
    value = round(a_ms / b_ms, 3) if a_ms is not None and b_ms else None
    return {"ratio": value, "a_ms": _round(a_ms), "b_ms": _round(b_ms), **extra}


def _round(value):
    return round(value, 3) if isinstance(value, float) else value


def spread(values) -> dict:
    """Median and the interquartile range of a sample, to show how noisy it was."""
    return {
        "n": len(values),
        "p25": percentile(values, 0.25),
        "p50": median(values),
        "p75": percentile(values, 0.75),
        "min": round(min(values), 3) if values else None,
    }


class CpuClock:
    """CPU seconds (user + system) of this process and of its child processes that are alive (the
    decoding processes of engine.decode_pool and their fork server), so a stage that runs in a child
    is charged its CPU. Children are looked up again on `refresh()`."""

    def __init__(self) -> None:
        import psutil

        self._own = psutil.Process()
        self._children: list = []
        self.refresh()

    def refresh(self) -> None:
        self._children = self._own.children(recursive=True)

    def seconds(self) -> float:
        import psutil

        total = time.process_time()
        for child in self._children:
            try:
                times = child.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total


def timed_cpu_ms(clock: CpuClock, fn: Callable, *args, **kwargs) -> tuple[float, float]:
    """(wall ms, CPU ms) of one call; CPU is this process's and its live children's (`clock`)."""
    cpu = clock.seconds()
    started = time.perf_counter()
    fn(*args, **kwargs)
    wall = (time.perf_counter() - started) * 1000.0
    return wall, (clock.seconds() - cpu) * 1000.0
