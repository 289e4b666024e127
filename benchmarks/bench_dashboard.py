"""How fast the dashboard answers on a session of one million samples and 100,000 requests.

The session is the dashboard tests' synthetic item API (two uvicorn workers, each with an event
loop thread, a thread-pool worker and an idle aiosqlite thread), written with the real
SessionWriter: 370 sampling windows of 5 s at 100 Hz, about 1,000,000 samples (the second
worker is recycled after 80% of the run), 300 variants of the CPU-bound helpers so a window
spreads each thread over up to ~150 distinct stacks, and 100,000 requests over the same 1,850 s.

`run()` times the work behind each callback (the data functions and figure builders, with the
caches emptied before every call, so each view is computed from the in-memory blocks and
columns as on a first view after a live refresh), then each page's callbacks as the browser
calls them (a POST to Dash's update endpoint through the Flask app, serialization included),
and returns the median and p95 per view, the cold start (opening the session and building the
app) and the session's size. Run it alone
with `python -m benchmarks.bench_dashboard`.
"""

from __future__ import annotations

import json
import shutil
import sqlite3
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any

from apiscope.dashboard import create_app, session_data
from apiscope.dashboard.data import DashboardSession
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


def _time(fn: Callable[[], Any], data: DashboardSession) -> dict[str, float]:
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


def _views(data: DashboardSession) -> dict[str, Callable[[], Any]]:
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


def _spec(output: str) -> tuple[list[dict[str, Any]], bool]:
    """The outputs of a callback from its dependency key ("..a.b...c.d.." when several)."""
    multi = output.startswith("..")
    specs = []
    for part in (output.strip(".").split("...") if multi else [output]):
        ident, prop = part.rsplit(".", 1)
        specs.append({"id": json.loads(ident) if ident.startswith("{") else ident,
                      "property": prop})
    return specs, multi


def _http_views(app: Any) -> dict[str, Callable[[], Any]]:
    """Each page's callbacks as the browser calls them: a POST to Dash's update endpoint
    through the Flask app (routing, the callback, JSON serialization of the figures)."""
    client = app.server.test_client()
    deps = client.get("/_dash-dependencies").get_json()
    values: dict[str, Any] = {"version": session_data(app).version, "sort": ["count", True],
                              "flame-role": "handler", "endpoint-route": "GET /reports/summary"}

    def post(output: str, **extra: Any) -> Callable[[], Any]:
        dep = next(d for d in deps if d["output"] == output)
        outputs, multi = _spec(output)
        given = {**values, **extra}
        body = {"output": output, "outputs": outputs if multi else outputs[0],
                "inputs": [{**i, "value": given.get(i["id"]) if isinstance(i["id"], str)
                            else None} for i in dep["inputs"]],
                "state": [{**s, "value": given.get(s["id"])} for s in dep["state"]],
                "changedPropIds": [f"{dep['inputs'][0]['id']}.{dep['inputs'][0]['property']}"]}

        def call() -> None:
            response = client.post("/_dash-update-component", json=body)
            if response.status_code != 200:
                raise RuntimeError(f"{output}: HTTP {response.status_code}")

        return call

    def output_of(prefix: str) -> str:
        return next(d["output"] for d in deps if d["output"].startswith(prefix))

    flame = output_of("..flame.figure")
    return {
        "overview": post(output_of("..overview-summary")),
        "endpoint page": post(output_of("..endpoint-summary")),
        "flamegraph (request threads)": post(flame),
        "flamegraph, one endpoint": post(flame, **{"flame-endpoint": "GET /reports/summary"}),
        "flamegraph, with idle, search": post(flame, **{"flame-toggles": ["idle"],
                                                         "flame-search": "compute"}),
        "timeline": post(output_of('{"name":"timeline"')),
        "resources": post(output_of('..{"name":"cpu_percent"')),
    }


PAGES = {"overview": ("", "#endpoints-table"), "flamegraph": ("flamegraph", "#flame .main-svg"),
         "endpoint": ("endpoint?route=GET%20%2Freports%2Fsummary", "#slow-table"),
         "resources": ("resources", ".js-plotly-plot .scatterlayer .trace")}


def _first_pages(app: Any, tmp: Path) -> dict[str, Any]:
    """Seconds from navigation to a page drawn with every callback answered, in a real
    headless Chromium (the first visit loads Plotly's bundle; the others hit the cache)."""
    if not (shutil.which("chromium") and shutil.which("chromedriver")):
        return {"skipped": "chromium and chromedriver are not installed"}
    from apiscope.dashboard import start_server_thread
    from tests.dashboard.browser import chromium
    from tests.support import free_port, wait_until

    handle = start_server_thread(app, "127.0.0.1", free_port())
    out: dict[str, Any] = {}
    try:
        with chromium(tmp / "profile", tmp / "downloads") as driver:
            for name, (path, css) in PAGES.items():
                laps = []
                for _ in range(3):
                    t0 = time.perf_counter()
                    driver.get(handle.url + path)
                    wait_until(lambda css=css: driver.execute_script(
                        "return document.querySelector(arguments[0]) !== null && document"
                        ".querySelector('[data-dash-is-loading=\"true\"]') === null", css),
                        timeout=60, interval=0.02, what=name)
                    laps.append(round(time.perf_counter() - t0, 2))
                out[name] = {"first_s": laps[0], "cached_s": min(laps[1:])}
    finally:
        handle.stop()
    return out


def _stored(path: Path, sql: str) -> tuple[Any, ...]:
    """One row straight from the file: the size of what the views work on."""
    with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        row: tuple[Any, ...] = conn.execute(sql).fetchone()
        return row


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
        rows = _stored(path, "SELECT count(*), sum(count) FROM samples")
        requests = _stored(path, "SELECT count(*) FROM requests")[0]
        views = {name: _time(fn, data) for name, fn in _views(data).items()}
        http = {name: _time(fn, data) for name, fn in _http_views(app).items()}
        pages = _first_pages(app, Path(tmp))
        if "skipped" in pages:
            data.close()  # else stopping the page server closed it
        return {
            "session": {"samples": rows[1], "sample_rows": rows[0], "requests": requests,
                        "windows": len(data.samples.windows),
                        "file_mb": round(path.stat().st_size / 1e6, 1),
                        "generate_s": round(generated, 1)},
            "cold_start_s": round(cold, 2),
            "views": views,
            "callbacks_http": http,
            "browser_page_s": pages,
            "slowest_p95_ms": max(v["p95_ms"] for v in [*views.values(), *http.values()]),
        }


if __name__ == "__main__":
    print(json.dumps(run(), indent=2))
