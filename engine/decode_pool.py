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
as their raw bytes (about 1 MB for a 1024x1024 8-bit X-ray; bench/run.py reports the added time as
`decode_child_overhead_ms`). The same child writes the stored copy's PNG
(`decode_with_stored_copy`) and reduces a stored copy to the pages' bounded-size derivative
(`display_levels`), so neither runs in a request's thread.
"""

from __future__ import annotations

import logging
import multiprocessing
import queue
import resource
import threading
from multiprocessing.connection import Connection

import numpy as np

from engine import decode, stored_image
from engine.decode import DecodeError

logger = logging.getLogger(__name__)

_context = multiprocessing.get_context("forkserver")
# Imported once by the fork server, so that each child starts with the decoders loaded.
_context.set_forkserver_preload(["engine.decode", "engine.stored_image", "pydicom", "pydicom.pixels"])

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


def _work(job: str, data: bytes, filename: str, options: dict):
    """What the child does for one request: the upload's pixels ("decode", "stored_copy") or a
    stored copy's bounded-size gray levels and their maximum ("display"). Returns (pixels, extra)."""
    if job == "display":
        try:
            return stored_image.display_levels(data, options["max_side"])
        except (OSError, SyntaxError, ValueError) as exc:  # Pillow's ways of saying "unreadable"
            raise DecodeError(f"The stored image cannot be read ({exc}).", code="truncated") from exc
    return decode.decode_gray(data, filename, **options), None


def _serve(connection: Connection) -> None:
    """The child's loop: one (job, bytes, name, options, memory cap) request at a time, answered
    with ("ok", shape, dtype, extra) followed by the pixels' raw bytes, or ("refused", DecodeError)
    or ("memory", None). For "stored_copy" a second answer follows the pixels: ("png", bytes) of
    the stored copy, written while the worker runs the model. Exits when the worker goes."""
    while True:
        try:
            job, data, filename, options, max_bytes = connection.recv()
        except (EOFError, OSError):
            return
        # Soft limit only: the next request may set another (the settings can differ between
        # requests); nothing the file controls calls setrlimit.
        _, hard = resource.getrlimit(resource.RLIMIT_AS)
        resource.setrlimit(
            resource.RLIMIT_AS, (max_bytes if hard == resource.RLIM_INFINITY else min(max_bytes, hard), hard)
        )
        pixels = None
        try:
            pixels, extra = _work(job, data, filename, options)
            pixels = np.ascontiguousarray(pixels)
            reply = ("ok", pixels.shape, pixels.dtype.str, extra)
        except DecodeError as exc:
            reply = ("refused", exc)
        except MemoryError:
            reply = ("memory", None)
        del data
        try:
            connection.send(reply)
            if reply[0] == "ok":
                # The pixels as their raw bytes: no pickling, and the worker reads them straight
                # into its own array.
                connection.send_bytes(memoryview(pixels).cast("B"))
                if job == "stored_copy":
                    reply = ("png", stored_image.png_bytes(pixels))
                    connection.send(reply)
        except MemoryError:
            reply = ("memory", None)
            connection.send(reply)
        del pixels
        if reply[0] == "memory":
            return  # a fresh child rather than one whose heap a failed allocation left behind


def _timeout(label: str, timeout_s: float) -> DecodeError:
    return DecodeError(
        f"Decoding the image {label}took longer than the {timeout_s:g} s allowed; it was "
        "stopped. Send a smaller or simpler file.",
        code="decode_timeout",
        status=422,
    )


def _stopped(label: str) -> DecodeError:
    return DecodeError(
        f"Decoding the image {label}stopped the decoder; the file cannot be read.",
        code="decode_failed",
        status=422,
    )


def _out_of_memory(label: str, max_mb: int) -> DecodeError:
    return DecodeError(
        f"Decoding the image {label}needed more than the {max_mb:,} MB of memory allowed.",
        code="decode_memory",
        status=422,
    )


class StoredCopy:
    """The stored copy's PNG that a decoding process is still writing (`decode_with_stored_copy`).
    `result()` waits for it (at most the decode time limit) and hands the process back to the pool;
    call it exactly once, from any thread."""

    def __init__(self, child: _Child, label: str, timeout_s: float, max_mb: int) -> None:
        self._child, self._label, self._timeout_s, self._max_mb = child, label, timeout_s, max_mb

    def result(self) -> bytes:
        child, label = self._child, self._label
        try:
            if not child.connection.poll(self._timeout_s):
                child.stop()
                raise _timeout(label, self._timeout_s)
            kind, value = child.connection.recv()
        except (EOFError, OSError) as exc:
            child.stop()
            raise _stopped(label) from exc
        except BaseException:
            child.stop()
            raise
        if kind != "png":
            child.stop()
            raise _out_of_memory(label, self._max_mb)
        _idle.put(child)
        return value


def _run(job: str, data: bytes, filename: str, options: dict, *, timeout_s: float, max_mb: int):
    try:
        child = _idle.get_nowait()
    except queue.Empty:
        child = _Child()
    label = f"{filename!r} " if filename else ""
    try:
        child.connection.send((job, data, filename, options, max_mb * 1024 * 1024))
        if not child.connection.poll(timeout_s):
            child.stop()
            logger.warning("decoding %s took more than %s s: stopped", label or "an upload", timeout_s)
            raise _timeout(label, timeout_s)
        reply = child.connection.recv()
        pixels = None
        if reply[0] == "ok":
            _, shape, dtype, extra = reply
            pixels = np.empty(shape, dtype=np.dtype(dtype))
            child.connection.recv_bytes_into(pixels.reshape(-1).view(np.uint8))
    except (EOFError, OSError) as exc:  # the child died: the kernel's OOM killer, a crash
        child.stop()
        logger.warning("the decoding process stopped while decoding %s: %s", label or "an upload", exc)
        raise _stopped(label) from exc
    except BaseException:
        child.stop()  # e.g. the request was cancelled mid-way: the child's state is unknown
        raise
    if reply[0] == "memory":
        child.stop()
        raise _out_of_memory(label, max_mb)
    if reply[0] == "refused":
        _idle.put(child)
        raise reply[1]
    if job == "stored_copy":
        return pixels, StoredCopy(child, label, timeout_s, max_mb)
    _idle.put(child)
    return pixels, extra


def decode_gray(data: bytes, filename: str = "", *, timeout_s: float, max_mb: int, **checks) -> np.ndarray:
    """`engine.decode.decode_gray` in a child process, with at most `max_mb` MB of address space
    and `timeout_s` seconds; `checks` are that function's keyword options (`max_pixels`,
    `allow_burned_in_annotation`, `frontal_chest_only`). Raises DecodeError as it does, and also
    code "decode_timeout" or "decode_memory" (422) when the file needed more than that."""
    pixels, _ = _run("decode", data, filename, checks, timeout_s=timeout_s, max_mb=max_mb)
    return pixels


def decode_with_stored_copy(
    data: bytes, filename: str = "", *, timeout_s: float, max_mb: int, **checks
) -> tuple[np.ndarray, StoredCopy]:
    """As `decode_gray`, and then the same child writes the stored copy's PNG
    (`engine.stored_image.png_bytes`) of the pixels while the caller goes on: (pixels, StoredCopy),
    whose `result()` gives the PNG bytes and must be called once. The request's thread neither
    encodes the PNG nor holds its intermediate arrays."""
    return _run("stored_copy", data, filename, checks, timeout_s=timeout_s, max_mb=max_mb)


def display_levels(data: bytes, *, max_side: int, timeout_s: float, max_mb: int) -> tuple[np.ndarray, int]:
    """`engine.stored_image.display_levels` of a stored copy, in a child process: the full copy is
    decoded there, and only the bounded-size levels come back. Raises DecodeError when the copy
    cannot be read within the limits."""
    return _run("display", data, "", {"max_side": max_side}, timeout_s=timeout_s, max_mb=max_mb)


def warm_up() -> None:
    """Starts the fork server and one child now rather than on the first upload."""
    try:
        child = _idle.get_nowait()
    except queue.Empty:
        child = _Child()
    _idle.put(child)
