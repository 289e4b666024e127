"""Ingest: how many samples per second the parser and the session store sustain.

Input is real py-spy raw output (the parser's test fixtures: uvicorn, gunicorn with two
workers, a thread pool), replayed as one-second windows. Each window's text is parsed, its
threads' roles found, its samples split into running and waiting ones and written through
`SessionWriter`, as the collector does; the rate is samples stored per second of wall time,
flushed to disk. Each thread is given a measured CPU and run-queue time for its window (as the
kernel's reading would), so the split shares them out as it does in a session.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from apiscope.collectors.oncpu import ActivityShares, ThreadBudget, line_times, split_samples
from apiscope.collectors.pyspy import parse_raw
from apiscope.collectors.threads import is_waiting, thread_roles
from apiscope.collectors.trace import raw_as_trace
from apiscope.model import Frame, StackWindow, ThreadRole
from apiscope.store import SessionWriter

FIXTURES = Path(__file__).resolve().parent.parent / "tests" / "collectors" / "fixtures"
SOURCES = ["uvicorn_async.txt", "gunicorn_subprocesses.txt", "uvicorn_sync_threadpool.txt",
           "uvicorn_async_sleep.txt"]


def ingest(directory: Path, windows: int = 600) -> dict[str, float]:
    texts = [(FIXTURES / name).read_text() for name in SOURCES]
    path = directory / "ingest.sqlite"
    stored = 0
    t0 = time.perf_counter()
    shares = ActivityShares()
    with SessionWriter(path) as writer:
        for i in range(windows):
            raw = parse_raw(texts[i % len(texts)], default_pid=1000)
            roles = thread_roles(raw.samples)

            def idle(pid: int, tid: int, frames: tuple[Frame, ...]) -> bool:
                return is_waiting(frames, roles.get((pid, tid), ThreadRole.OTHER))  # noqa: B023

            trace = raw_as_trace(raw, 100)
            shares.observe(line_times(trace.segments, idle), 1.0, active=i % 4 == 0)
            # A third of each thread's window on a CPU, a twentieth waiting for one.
            budgets = {(s.pid, s.tid): ThreadBudget(0.3, 0.05) for s in trace.segments}
            samples = split_samples(trace.segments, 100, idle, shares, budgets, 1.0)
            stored += sum(s.count for s in samples)
            writer.put_window(StackWindow(float(i), float(i + 1), 100, samples, threads=roles))
        writer.flush()
    elapsed = time.perf_counter() - t0
    return {"samples": stored, "seconds": elapsed, "samples_per_second": stored / elapsed,
            "bytes": path.stat().st_size}


def run(repeat: int = 3) -> dict[str, Any]:
    runs = []
    for _ in range(repeat):
        with tempfile.TemporaryDirectory() as tmp:
            runs.append(ingest(Path(tmp)))
    return {"runs": runs,
            "median_samples_per_second": statistics.median(r["samples_per_second"] for r in runs)}


if __name__ == "__main__":
    print(run())
