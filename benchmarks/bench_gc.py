"""The garbage collector's passes a middleware makes a server run, under concurrent load.

A bare FastAPI server under load frees what each request allocated as the request ends: the
youngest generation's count never reaches its threshold, and the collector does not run. A
middleware that keeps a request's objects alive past its end (a context variable holding the
scope, copied into the contexts of uvicorn's cancelled keep-alive timers) makes it run, and
promotes the framework's objects of requests in flight from generation to generation. The
passes are counted from inside each server by a `sitecustomize` put on its path (the
interpreter's own counts, `gc.get_stats()`, and the collector's CPU through `gc.callbacks`),
before and after a wrk run: a count, which moves far less than a throughput ratio.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, server, wrk

VARIANTS = ("bare", "floor", "apiscope")
CONNECTIONS = 16

# Written into a directory of its own on the server's PYTHONPATH: a thread writes the
# collector's counts every 0.2 s; the callback times each pass by the thread's CPU clock.
HOOK = '''
import gc, json, os, threading, time

_OUT = os.environ["BENCH_GC_OUT"]
_cpu = [0.0, 0.0, 0.0]
_began = [0.0]


def _timed(phase, info):
    if phase == "start":
        _began[0] = time.thread_time()
    else:
        _cpu[info["generation"]] += time.thread_time() - _began[0]


def _write():
    while True:
        time.sleep(0.2)
        row = {"at": time.time(), "passes": [g["collections"] for g in gc.get_stats()],
               "cpu": list(_cpu)}
        with open(_OUT + ".tmp", "w") as out:
            json.dump(row, out)
        os.replace(_OUT + ".tmp", _OUT)


gc.callbacks.append(_timed)
threading.Thread(target=_write, daemon=True).start()
'''


def _read(path: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            return dict(json.loads(path.read_text()))
        except (OSError, ValueError):
            time.sleep(0.05)
    raise RuntimeError(f"the server wrote no collector counts to {path}")


def measure(variant: str, seconds: int = 5) -> dict[str, Any]:
    """One server of `variant` under wrk: the collector's passes of each generation and its
    CPU, per 1,000 requests and per request."""
    with tempfile.TemporaryDirectory() as tmp:
        hook = Path(tmp) / "hook"
        hook.mkdir()
        (hook / "sitecustomize.py").write_text(HOOK)
        counts = Path(tmp) / "gc.json"
        env = {"BENCH_MIDDLEWARE": variant, "BENCH_GC_OUT": str(counts),
               "PYTHONPATH": f"{hook}:{ROOT}"}
        with server("benchmarks.apps:app", env) as (_, url):
            wrk(url, 2, CONNECTIONS)  # warm-up: imports, caches, the agent's first pass
            time.sleep(0.3)
            before = _read(counts)
            requests = round(wrk(url, seconds, CONNECTIONS) * seconds)
            time.sleep(0.3)
            after = _read(counts)
    passes = [b - a for a, b in zip(before["passes"], after["passes"], strict=True)]
    cpu = sum(after["cpu"]) - sum(before["cpu"])
    return {"requests": requests, "passes": passes,
            "passes_per_1000": [1000 * p / requests for p in passes],
            "cpu_us": 1e6 * cpu / requests}


def run(rounds: int = 3, seconds: int = 5) -> dict[str, Any]:
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make system-deps)")
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        for variant in VARIANTS:
            rows[variant].append(measure(variant, seconds))
    return {"rounds": rounds, "seconds": seconds, "connections": CONNECTIONS, "rows": rows}


def render(result: dict[str, Any]) -> str:
    lines = ["| middleware | young / middle / full passes per 1,000 requests (median) | the "
             "collector's CPU per request (median, min, max) |", "| --- | --- | --- |"]
    for variant, rows in result["rows"].items():
        passes = [statistics.median(r["passes_per_1000"][g] for r in rows) for g in range(3)]
        cpu = [r["cpu_us"] for r in rows]
        lines.append(f"| {variant} | {' / '.join(f'{p:.2f}' for p in passes)} | "
                     f"{statistics.median(cpu):.2f} µs ({min(cpu):.2f}, {max(cpu):.2f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(render(run(rounds=int(sys.argv[1]) if len(sys.argv) > 1 else 3)))
