"""Decoding bounded in time and memory, whatever the file does: `decode_gray` runs
`engine.decode.decode_gray` in a child process whose address space is capped (RLIMIT_AS) and
which is killed when it runs past the time limit. No Django here.

`engine.decode` refuses the known expensive files from their headers; this is the bound for the
ones nobody has thought of yet (a library's slow path, a decoder bug). A worker thread hands the
upload to an idle child (or starts one) and waits; an attacker's file can cost at most the time
limit and the memory cap, and only its own request fails. Children come from multiprocessing's
forkserver: a fork of a small single-threaded process that has imported the decoders, not of the
worker with its model and thread pools, so a new child is ready in milliseconds. An idle child is
kept for the next upload; one that was killed or ran out of memory is replaced.

What it costs: the upload's bytes go to the child and the decoded pixels come back through a pipe
(about 1 MB for a 1024x1024 8-bit X-ray; bench/run.py reports the added time as
`decode_child_overhead_ms`).
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import resource
import threading
from multiprocessing.connection import Connection

import numpy as np

from engine import decode
from engine.decode import DecodeError

logger = logging.getLogger(__name__)

_context = multiprocessing.get_context("forkserver")
# Imported once by the fork server, so that each child starts with the decoders loaded.
_context.set_forkserver_preload(["engine.decode", "pydicom", "pydicom.pixels"])

_idle: queue.LifoQueue[_Child] = queue.LifoQueue()
_start_lock = threading.Lock()


class _Child:
    """One decoding process and the worker's end of its pipe."""

    def __init__(self) -> None:
        self.connection, child_end = _context.Pipe()
        self.process = _context.Process(target=_serve, args=(child_end,), daemon=True, name="lungsite-decode")
        with _start_lock:  # the fork server is started once per process, by the first child
            self.process.start()
        child_end.close()

    def stop(self) -> None:
        self.process.kill()
        self.process.join(timeout=5)
        self.connection.close()


def _serve(connection: Connection) -> None:
    """The child's loop: one (bytes, name, options, memory cap) request at a time, answered with
    ("ok", pixels), ("refused", DecodeError) or ("memory", None). Exits when the worker goes."""
    while True:
        try:
            data, filename, options, max_bytes = connection.recv()
        except (EOFError, OSError):
            return
        # Soft limit only: the next request may set another (the settings can differ between
        # requests); nothing the file controls calls setrlimit.
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(
            resource.RLIMIT_AS, (max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard), hard)
        )
        try:
            reply = ("ok", decode.decode_gray(data, filename, **options))
        except DecodeError as exc:
            reply = ("refused", exc)
        except MemoryError:
            reply = ("memory", None)
        del data
        try:
            connection.send(reply)
        except MemoryError:
            connection.send(("memory", None))
        if reply[0] == "memory":
            return  # a fresh child rather than one whose heap a failed allocation left behind


def decode_gray(
    data: bytes,
    filename: str = "",
    *,
    timeout_s: float,
    max_mb: int,
    max_pixels: int,
    allow_burned_in_annotation: bool = False,
    frontal_chest_only: bool = False,
) -> np.ndarray:
    """`engine.decode.decode_gray` in a child process, with at most `max_mb` MB of address space
    and `timeout_s` seconds. Raises DecodeError as that function does, and also code
    "decode_timeout" or "decode_memory" (422) when the file needed more than that."""
    try:
        child = _idle.get_nowait()
    except queue.Empty:
        child = _Child()
    options = {
        "max_pixels": max_pixels,
        "allow_burned_in_annotation": allow_burned_in_annotation,
        "frontal_chest_only": frontal_chest_only,
    }
    label = f"{filename!r} " if filename else ""
    try:
        child.connection.send((data, filename, options, max_mb * 1024 * 1024))
        if not child.connection.poll(timeout_s):
            child.stop()
            logger.warning("decoding %s took more than %s s: stopped", label or "an upload", timeout_s)
            raise DecodeError(
                f"Decoding the image {label}took longer than the {timeout_s:g} s allowed; it was "
                "stopped. Send a smaller or simpler file.",
                code="decode_timeout",
                status=422,
            )
        kind, value = child.connection.recv()
    except (EOFError, OSError) as exc:  # the child died: the kernel's OOM killer, a crash
        child.stop()
        logger.warning("the decoding process stopped while decoding %s: %s", label or "an upload", exc)
        raise DecodeError(
            f"Decoding the image {label}stopped the decoder; the file cannot be read.",
            code="decode_failed",
            status=422,
        ) from exc
    except BaseException:
        child.stop()  # e.g. the request was cancelled mid-way: the child's state is unknown
        raise
    if kind == "memory":
        child.stop()
        raise DecodeError(
            f"Decoding the image {label}needed more than the {max_mb:,} MB of memory allowed.",
            code="decode_memory",
            status=422,
        )
    _idle.put(child)
    if kind == "refused":
        raise value
    return value


def warm_up() -> None:
    """Starts the fork server and one child now rather than on the first upload."""
    try:
        child = _idle.get_nowait()
    except queue.Empty:
        child = _Child()
    _idle.put(child)
