"""How long `apiscope export` takes on a one-million-sample session, per format.

The session is generated with the real SessionWriter: 2 processes x 4 threads, 250 sampling
windows of 5 s at 100 Hz (500 samples per thread and window, 1,000,000 in all), each thread and
window spreading its samples over ~60 of 2,000 distinct stacks about 30 frames deep (a shared
server prefix, one of 40 handlers, then application, library and stdlib frames).

`run()` returns the median of 3 timed exports per format (through the CLI entry point, writing
to a file; wall and CPU seconds), the output sizes and the generation time. The html export
includes building the session's report.
Run it alone with `python -m benchmarks.bench_export`.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from apiscope.cli.main import main
from apiscope.model import Frame, ProcessInfo, SampleState, StackSample, StackWindow, ThreadRole
from apiscope.store import SessionWriter

FORMATS = ("folded", "speedscope", "svg", "html")
PIDS = (4101, 4102)
TIDS = (1, 2, 3, 4)
WINDOWS = 250
WINDOW_SECONDS = 5.0
RATE_HZ = 100
STACKS = 2000
STACKS_PER_WINDOW = 60
SITE = "/srv/venv/lib/python3.11/site-packages"
STDLIB = "/usr/lib/python3.11"


def _prefix() -> list[Frame]:
    uvicorn = [Frame("<module>", f"{SITE}/uvicorn/__main__.py", 4),
               Frame("main", f"{SITE}/click/core.py", 1157),
               Frame("run", f"{SITE}/uvicorn/main.py", 580),
               Frame("run", f"{STDLIB}/asyncio/runners.py", 190),
               Frame("run_until_complete", f"{STDLIB}/asyncio/base_events.py", 640),
               Frame("run_forever", f"{STDLIB}/asyncio/base_events.py", 607),
               Frame("_run_once", f"{STDLIB}/asyncio/base_events.py", 1922),
               Frame("_run", f"{STDLIB}/asyncio/events.py", 80)]
    asgi = [Frame("run_asgi", f"{SITE}/uvicorn/protocols/http/httptools_impl.py", 419),
            Frame("__call__", f"{SITE}/fastapi/applications.py", 1054),
            Frame("__call__", f"{SITE}/starlette/applications.py", 123),
            Frame("__call__", f"{SITE}/starlette/middleware/errors.py", 164),
            Frame("__call__", f"{SITE}/starlette/routing.py", 718),
            Frame("app", f"{SITE}/starlette/routing.py", 74)]
    return uvicorn + asgi


def make_stacks(rng: random.Random) -> list[tuple[Frame, ...]]:
    prefix = _prefix()
    handlers = [Frame(f"handler_{i}", f"/srv/app/routes/r{i % 8}.py", 10 + i) for i in range(40)]
    app = [Frame(f"service_{i}", f"/srv/app/services/s{i % 12}.py", 5 + i) for i in range(120)]
    lib = [Frame(f"lib_{i}", f"{SITE}/pkg{i % 15}/m{i % 7}.py", 20 + i) for i in range(300)]
    std = [Frame(f"std_{i}", f"{STDLIB}/mod{i % 20}.py", 30 + i) for i in range(150)]
    stacks: set[tuple[Frame, ...]] = set()
    while len(stacks) < STACKS:
        depth = rng.randint(8, 24)
        tail = [rng.choice(app) for _ in range(depth // 3)]
        tail += [rng.choice(lib) for _ in range(depth // 2)]
        tail += [rng.choice(std) for _ in range(depth - len(tail))]
        stacks.add((*prefix, rng.choice(handlers), *tail))
    return sorted(stacks, key=lambda s: [f.label() for f in s])


def write_session(path: Path, seed: int = 7) -> int:
    """Write the benchmark session; returns the number of samples written."""
    rng = random.Random(seed)
    stacks = make_stacks(rng)
    weights = [1 / (i + 1) for i in range(len(stacks))]  # a few hot stacks, a long tail
    per_window = int(WINDOW_SECONDS * RATE_HZ)
    t0 = 1_780_000_000.0
    written = 0
    with SessionWriter(path) as writer:
        for pid in PIDS:
            writer.put_process(ProcessInfo(pid, None, "worker", "uvicorn app:app", t0))
        roles = {(pid, tid): ThreadRole.LOOP if tid == 1 else ThreadRole.WORKER
                 for pid in PIDS for tid in TIDS}
        for w in range(WINDOWS):
            samples = []
            for pid in PIDS:
                for tid in TIDS:
                    chosen = rng.choices(range(len(stacks)), weights, k=per_window)
                    counts: dict[int, int] = {}
                    for index in chosen[:STACKS_PER_WINDOW]:
                        counts[index] = 0
                    keys = list(counts)
                    for index in chosen:  # fold the rest onto the window's chosen stacks
                        counts[index if index in counts else keys[index % len(keys)]] += 1
                    for index, count in sorted(counts.items()):
                        state = SampleState.WAITING if index % 5 == 0 else SampleState.RUNNING
                        samples.append(StackSample(pid, tid, f"thread-{tid}", stacks[index],
                                                   count, state, index % 3 != 0))
                        written += count
            start = t0 + w * WINDOW_SECONDS
            writer.put_window(StackWindow(start, start + WINDOW_SECONDS, RATE_HZ,
                                          tuple(samples), threads=roles))
        writer.flush(timeout=600)
    return written


def _time_export(session: Path, fmt: str, out: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of one export; CPU time is the steadier figure on a busy machine."""
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stderr(io.StringIO()):
        code = main(["export", str(session), "--format", fmt, "-o", str(out)])
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if code != 0:
        raise RuntimeError(f"export --format {fmt} exited {code}")
    return elapsed, cpu


def run(repeat: int = 3, directory: Path | None = None) -> dict[str, Any]:
    """Median export time per format (seconds) on a freshly generated 1M-sample session."""
    with tempfile.TemporaryDirectory(prefix="apiscope-bench-") as tmp:
        base = directory or Path(tmp)
        session = base / "bench-1m.sqlite"
        started = time.perf_counter()
        samples = write_session(session)
        generate = time.perf_counter() - started
        results: dict[str, Any] = {"samples": samples, "generate_seconds": round(generate, 2),
                                   "session_bytes": session.stat().st_size, "formats": {}}
        for fmt in FORMATS:
            out = base / f"bench.{fmt}"
            runs = [_time_export(session, fmt, out) for _ in range(repeat)]
            results["formats"][fmt] = {
                "median_seconds": round(statistics.median(wall for wall, _ in runs), 3),
                "median_cpu_seconds": round(statistics.median(cpu for _, cpu in runs), 3),
                "runs": [round(wall, 3) for wall, _ in runs],
                "output_bytes": out.stat().st_size,
            }
        return results


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
