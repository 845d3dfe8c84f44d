"""A real gunicorn server on 127.0.0.1 (gunicorn.conf.py) and HTTP clients for it.

Traffic goes to loopback only; every request has a timeout; the server is stopped (TERM, then KILL)
by the caller's `finally`."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

REQUEST_TIMEOUT_S = 60


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Server:
    """gunicorn -c gunicorn.conf.py, bound to a free loopback port."""

    def __init__(self, *, root: Path, env: dict, workers: int, threads: int, log_path: Path) -> None:
        self.root, self.workers, self.threads, self.log_path = root, workers, threads, log_path
        self.env = {**os.environ, **env, "GUNICORN_WORKERS": str(workers), "GUNICORN_THREADS": str(threads)}
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def start(self, timeout_s: float = 90.0) -> float:
        """Starts the server and waits for /healthz; returns the seconds it took."""
        started = time.perf_counter()
        log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self._log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{self.port}"],
            cwd=self.root,
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        while time.perf_counter() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}; see {self.log_path}")
            try:
                status, _ = get(self.port, "/healthz", timeout=2)
                if status == 200:
                    return time.perf_counter() - started
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"gunicorn did not answer /healthz within {timeout_s:.0f} s; see {self.log_path}")

    def worker_pids(self) -> list[int]:
        import psutil

        if self.process is None:
            return []
        try:
            return [child.pid for child in psutil.Process(self.process.pid).children()]
        except psutil.NoSuchProcess:
            return []

    @staticmethod
    def worker_has_loaded(pid: int) -> bool:
        """Whether the worker has mapped ONNX Runtime's library, i.e. loaded a model to serve."""
        try:
            with open(f"/proc/{pid}/maps") as handle:
                return any("onnxruntime" in line for line in handle)
        except OSError:
            return False

    def worker_memory_mb(self) -> list[dict]:
        """Per worker: current RSS, peak RSS (VmHWM, the kernel's high-water mark) and USS (pages no
        other process shares: what one more worker costs) in MB."""
        import psutil

        out = []
        for pid in self.worker_pids():
            values = {"pid": pid}
            with contextlib.suppress(psutil.Error, OSError):
                values["USS"] = round(psutil.Process(pid).memory_full_info().uss / 2**20, 1)
            try:
                with open(f"/proc/{pid}/status") as handle:
                    for line in handle:
                        key, _, rest = line.partition(":")
                        if key in ("VmRSS", "VmHWM"):
                            values[key] = round(int(rest.split()[0]) / 1024, 1)
            except OSError:
                continue
            out.append(values)
        return out

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGTERM)
                self.process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        self.process = None


def _call(port: int, method: str, path: str, *, headers: dict, timeout: float) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, headers=headers)
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def get(port: int, path: str, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    return _call(port, "GET", path, headers={}, timeout=timeout)


def post_empty(port: int, path: str, *, token: str, timeout: float = REQUEST_TIMEOUT_S) -> tuple[int, bytes]:
    """POST with no body and a token; returns (status, body)."""
    headers = {"Authorization": f"Token {token}", "Content-Length": "0"}
    return _call(port, "POST", path, headers=headers, timeout=timeout)


def multipart(data: bytes, filename: str) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{filename}"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode()
    return head + data + f"\r\n--{boundary}--\r\n".encode(), f"multipart/form-data; boundary={boundary}"


@dataclass
class Outcome:
    started: float  # perf_counter at send
    ms: float
    status: int  # 0: no HTTP answer (connection error, timeout)
    version: str | None = None
    error: str | None = None


class PredictClient:
    """One keep-alive connection posting predictions with a token."""

    def __init__(self, port: int, token: str) -> None:
        self.port, self.token = port, token
        self.conn: http.client.HTTPConnection | None = None

    def post(self, body: bytes, content_type: str) -> Outcome:
        started = time.perf_counter()
        try:
            if self.conn is None:
                self.conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=REQUEST_TIMEOUT_S)
            self.conn.request(
                "POST",
                "/api/v1/predictions/",
                body=body,
                headers={"Content-Type": content_type, "Authorization": f"Token {self.token}"},
            )
            response = self.conn.getresponse()
            payload = response.read()
            ms = (time.perf_counter() - started) * 1000
            version, error = None, None
            if response.status == 201:
                version = json.loads(payload).get("model", {}).get("version_name")
            else:
                error = payload[:300].decode("utf-8", "replace")
            if response.getheader("Connection", "").lower() == "close":
                self.close()
            return Outcome(started, ms, response.status, version, error)
        except (OSError, http.client.HTTPException, ValueError) as exc:
            self.close()
            return Outcome(
                started, (time.perf_counter() - started) * 1000, 0, None, f"{type(exc).__name__}: {exc}"
            )

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None


@dataclass
class LoadResult:
    wall_s: float
    outcomes: list[Outcome] = field(default_factory=list)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if o.status != 201]


def run_clients(
    port: int,
    token: str,
    bodies: list,
    *,
    clients: int,
    per_client: int | None = None,
    stop: threading.Event | None = None,
    max_s: float = 300.0,
    on_outcome=None,
) -> LoadResult:
    """`clients` threads, each posting `per_client` predictions back to back (or until `stop` is
    set), cycling through `bodies` from its own offset. Bounded by `max_s` in any case.
    `on_outcome(outcome)` is called as each answer arrives."""
    outcomes: list[Outcome] = []
    lock = threading.Lock()
    deadline = time.perf_counter() + max_s

    def work(offset: int) -> None:
        client = PredictClient(port, token)
        count = 0
        try:
            while time.perf_counter() < deadline:
                if per_client is not None and count >= per_client:
                    break
                if stop is not None and stop.is_set():
                    break
                body, content_type = bodies[(offset + count) % len(bodies)]
                outcome = client.post(body, content_type)
                with lock:
                    outcomes.append(outcome)
                if on_outcome is not None:
                    on_outcome(outcome)
                count += 1
        finally:
            client.close()

    threads = [threading.Thread(target=work, args=(i * 3,), daemon=True) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max_s + REQUEST_TIMEOUT_S)
    return LoadResult(time.perf_counter() - started, sorted(outcomes, key=lambda o: o.started))


@dataclass
class SteadyRate:
    ms_per_request: float | None  # wall ms between completions inside the window
    window_s: float
    completed_in_window: int
    load: LoadResult  # every request of the run, ramp and drain included


def steady_rate(
    port: int, token: str, bodies: list, *, clients: int, seconds: float, ramp_s: float
) -> SteadyRate:
    """`clients` clients posting back to back for `seconds`; the rate is taken between completions
    in the window [ramp_s, seconds]: while all of them are in flight, not while they connect and
    warm up or while the last ones drain (then fewer than `clients` would be busy)."""
    stop = threading.Event()
    holder: dict = {}
    started = time.perf_counter()
    thread = threading.Thread(
        target=lambda: holder.setdefault(
            "load", run_clients(port, token, bodies, clients=clients, stop=stop, max_s=seconds + 60)
        ),
        daemon=True,
    )
    thread.start()
    time.sleep(seconds)
    stop.set()
    thread.join(timeout=REQUEST_TIMEOUT_S + 60)
    load = holder.get("load") or LoadResult(time.perf_counter() - started)
    ends = sorted(
        o.started + o.ms / 1000
        for o in load.outcomes
        if o.status == 201 and started + ramp_s <= o.started + o.ms / 1000 <= started + seconds
    )
    ms = (ends[-1] - ends[0]) * 1000 / (len(ends) - 1) if len(ends) > 1 else None
    return SteadyRate(ms, round(ends[-1] - ends[0], 3) if ends else 0.0, len(ends), load)
