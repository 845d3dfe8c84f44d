"""The bare-forward loop in a process of its own: ONNX Runtime and numpy, nothing else.

The benchmark's own process holds torch, Django, several sessions and client threads; a loop at
2 intra-op threads measured there sometimes ran at 50-58 ms a forward instead of 31-33 for whole
runs, while the same loop in a fresh process held 30.4-32.5 ms. So the loop runs here, commanded
over a pipe: `BareLoop` starts `python -m bench.bare_loop GRAPH ARRAYS CORES`, which opens the
sessions once and answers one JSON line per request.
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KINDS = ("sequential_1_thread", "sequential_default_threads", "sequential_threads_per_core", "parallel")


def _loop(session, arrays, *, parallel: int, per_thread: int) -> float:
    """`parallel` threads each running the forward `per_thread` times back to back; wall ms per
    forward, all threads together."""

    def work(offset: int) -> None:
        for i in range(per_thread):
            session.run(None, {"input": arrays[(offset + i) % len(arrays)]})

    threads = [threading.Thread(target=work, args=(i * 5,), daemon=True) for i in range(parallel)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return (time.perf_counter() - started) * 1000 / (parallel * per_thread)


def main(argv: list[str]) -> int:
    import numpy as np

    from bench.inprocess import open_reference  # ORT's defaults but the threads (no torch there)

    graph_path, arrays_path, cores = argv[0], argv[1], int(argv[2])
    graph = Path(graph_path).read_bytes()
    arrays = list(np.load(arrays_path))
    sessions = {
        "sequential_1_thread": open_reference(graph, 1),
        "sequential_default_threads": open_reference(graph, None),
        "sequential_threads_per_core": open_reference(graph, cores),
    }
    sessions["parallel"] = sessions["sequential_1_thread"]
    for session in sessions.values():
        session.run(None, {"input": arrays[0]})  # first-run allocations are not part of a loop
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        ms = _loop(
            sessions[request["kind"]], arrays, parallel=request["parallel"], per_thread=request["per_thread"]
        )
        print(json.dumps({"ms": ms}), flush=True)
    return 0


class BareLoop:
    """The loop process. `run(kind, parallel=, per_thread=)` returns wall ms per forward."""

    def __init__(self, graph: bytes, arrays: list, *, cores: int, folder: Path) -> None:
        import numpy as np

        graph_path, arrays_path = folder / "bare_loop.onnx", folder / "bare_loop_inputs.npy"
        graph_path.write_bytes(graph)
        np.save(arrays_path, np.stack([np.asarray(a, dtype=np.float32) for a in arrays]))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bench.bare_loop", str(graph_path), str(arrays_path), str(cores)],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        if json.loads(self._answer()).get("ready") is not True:
            raise RuntimeError("the bare-loop process did not start")

    def _answer(self) -> str:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"the bare-loop process exited ({self.process.poll()})")
        return line

    def run(self, kind: str, *, parallel: int, per_thread: int) -> float:
        request = {"kind": kind, "parallel": parallel, "per_thread": per_thread}
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return json.loads(self._answer())["ms"]

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
