"""How fast the dashboard answers on a session of one million samples and 100,000 requests.

The session is the dashboard tests' synthetic item API (two uvicorn workers, each with an event
loop thread, a thread-pool worker and an idle aiosqlite thread), written with the real
SessionWriter: 370 sampling windows of 5 s at 100 Hz, about 1,000,000 samples (the second
worker is recycled after 80% of the run), 300 variants of the CPU-bound helpers so a window
spreads each thread over up to ~150 distinct stacks, and 100,000 requests over the same 1,850 s.

`run()` times the work behind each callback (the data functions and figure builders, with the
caches emptied before every call, so each view is computed from the in-memory blocks and
columns as on a first view after a live refresh) and returns the median and p95 per view, the
cold start (opening the session and building the app) and the session's size. Run it alone
with `python -m benchmarks.bench_dashboard`.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from apiscope.dashboard import create_app, session_data
from apiscope.dashboard.data import SessionData
from apiscope.dashboard.figures import (
    RESOURCE_METRICS,
    flame_figure,
    latency_figure,
    resource_figure,
    timeline_figure,
)
from apiscope.dashboard.flame import kind_of
from apiscope.dashboard.samples import SampleSlice
from tests.dashboard.synthetic import START, write_session

SECONDS = 1850.0  # the last worker is recycled at 80%: 1,000,000 samples in all
WINDOW_SECONDS = 5.0
VARIETY = 300
REQUESTS = 100_000
REPEATS = 15


def _percentile95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def _time(fn: Callable[[], Any], data: SessionData) -> dict[str, float]:
    laps = []
    for _ in range(REPEATS):
        data.samples._cache.clear()  # measure the uncached path, as after a live refresh
        data._shares.clear()
        data._stats.clear()
        t0 = time.perf_counter()
        fn()
        laps.append((time.perf_counter() - t0) * 1000)
    return {"median_ms": round(statistics.median(laps), 1),
            "p95_ms": round(_percentile95(laps), 1)}


def _views(data: SessionData) -> dict[str, Callable[[], Any]]:
    roots = data.app_roots()
    mid = (START + 600, START + 900)
    endpoint = "GET /reports/summary"

    def flame(flt: SampleSlice) -> Callable[[], Any]:
        return lambda: (flame_figure(data.flame(flt), lambda f: kind_of(f, roots)),
                        data.functions(flt))

    return {
        "overview": lambda: (data.endpoint_rows(None), data.flags(), data.process_cards()),
        "overview, 5 min range": lambda: data.endpoint_rows(mid),
        "endpoint page": lambda: (
            data.endpoint_rows(None), latency_figure(data.latency_series(endpoint, None), None),
            data.slowest_requests(endpoint, None),
            flame_figure(data.flame(SampleSlice(endpoint=endpoint)),
                         lambda f: kind_of(f, roots))),
        "flamegraph, whole session": flame(SampleSlice()),
        "flamegraph, with idle": flame(SampleSlice(include_idle=True)),
        "flamegraph, one pid": flame(SampleSlice(pid=4101)),
        "flamegraph, one thread": flame(SampleSlice(pid=4101, tid=41011)),
        "flamegraph, one endpoint": flame(SampleSlice(endpoint=endpoint)),
        "flamegraph, GIL holders": flame(SampleSlice(gil_only=True)),
        "flamegraph, 5 min range": flame(SampleSlice(*mid)),
        "flamegraph, search": lambda: flame_figure(data.flame(SampleSlice()),
                                                   lambda f: kind_of(f, roots), "compute"),
        "timeline": lambda: timeline_figure(data.samples.active_rate(), None),
        "resources": lambda: [resource_figure(m, t, u, data.resource_series(), None)
                              for m, t, u in RESOURCE_METRICS],
        "live refresh, nothing new": data.refresh,
    }


def run() -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "big.sqlite"
        t0 = time.perf_counter()
        write_session(path, seconds=SECONDS, window_s=WINDOW_SECONDS, variety=VARIETY,
                      rps=REQUESTS / SECONDS)
        generated = time.perf_counter() - t0
        t0 = time.perf_counter()
        app = create_app(path, live=False)
        cold = time.perf_counter() - t0
        data = session_data(app)
        rows = data.reader.query("SELECT count(*), sum(count) FROM samples")[0]
        requests = data.reader.query("SELECT count(*) FROM requests")[0][0]
        views = {name: _time(fn, data) for name, fn in _views(data).items()}
        data.close()
        return {
            "session": {"samples": rows[1], "sample_rows": rows[0], "requests": requests,
                        "windows": len(data.samples.windows),
                        "file_mb": round(path.stat().st_size / 1e6, 1),
                        "generate_s": round(generated, 1)},
            "cold_start_s": round(cold, 2),
            "views": views,
            "slowest_p95_ms": max(v["p95_ms"] for v in views.values()),
        }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
