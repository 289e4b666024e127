"""A realistic synthetic session: a FastAPI item API under uvicorn with two workers.

The loop threads spend time in a blocking `summary()` handler, an N+1 query handler and a fast
item lookup; a thread-pool worker runs a sync `create_item()`; an aiosqlite thread idles. The
requests, resources and flags match those stacks, so every dashboard view has something true
to show. `variety` multiplies the distinct stacks (for the benchmark's worst case).
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from apiscope.flag import Flag
from apiscope.model import (
    Frame,
    ProcessInfo,
    QueryStat,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    SampleState,
    StackSample,
    StackWindow,
    ThreadRole,
)
from apiscope.store import SessionWriter

SP = "/srv/itemapi/.venv/lib/python3.11/site-packages/"
STD = "/usr/local/lib/python3.11/"
APP = "/srv/itemapi/app/main.py"
START = 1_795_000_000.0  # 2026-11-18, a fixed instant so screenshots are reproducible

ROUTES = (
    RouteInfo("GET", "/items/{item_id}", "app.main:read_item", APP, 40, True),
    RouteInfo("POST", "/items", "app.main:create_item", APP, 58, False),
    RouteInfo("GET", "/reports/summary", "app.main:summary", APP, 84, True),
    RouteInfo("GET", "/users/{user_id}/orders", "app.main:list_orders", APP, 115, True),
    RouteInfo("GET", "/health", "app.main:health", APP, 140, True),
)

LOOP_BASE = (
    Frame("<module>", SP + "uvicorn/__main__.py", 4),
    Frame("run", SP + "uvicorn/main.py", 580),
    Frame("run", SP + "uvicorn/server.py", 67),
    Frame("run", STD + "asyncio/runners.py", 190),
    Frame("run_until_complete", STD + "asyncio/base_events.py", 641),
    Frame("run_forever", STD + "asyncio/base_events.py", 608),
    Frame("_run_once", STD + "asyncio/base_events.py", 1922),
)
ASGI = (
    Frame("_run", STD + "asyncio/events.py", 80),
    Frame("run_asgi", SP + "uvicorn/protocols/http/httptools_impl.py", 419),
    Frame("__call__", SP + "fastapi/applications.py", 1054),
    Frame("__call__", SP + "starlette/applications.py", 123),
    Frame("__call__", SP + "starlette/middleware/errors.py", 164),
    Frame("__call__", SP + "starlette/routing.py", 715),
    Frame("app", SP + "starlette/routing.py", 76),
    Frame("app", SP + "fastapi/routing.py", 269),
    Frame("run_endpoint_function", SP + "fastapi/routing.py", 192),
)
THREAD_BASE = (
    Frame("_bootstrap", STD + "threading.py", 995),
    Frame("_bootstrap_inner", STD + "threading.py", 1038),
    Frame("run", STD + "threading.py", 975),
)
WAITING, RUNNING, BLOCKED = SampleState.WAITING, SampleState.RUNNING, SampleState.BLOCKED


@dataclass(frozen=True, slots=True)
class Choice:
    frames: tuple[Frame, ...]
    state: SampleState
    weight: float


def _loop_choices(variety: int) -> list[Choice]:
    handler = LOOP_BASE + ASGI
    out = [
        Choice(LOOP_BASE + (Frame("select", STD + "selectors.py", 468),), WAITING, 40),
        Choice(handler + (Frame("summary", APP, 87),), BLOCKED, 22),
        Choice(handler + (Frame("read_item", APP, 42),
                          Frame("get", SP + "sqlalchemy/orm/session.py", 3600)), RUNNING, 8),
        Choice(handler + (Frame("list_orders", APP, 121),
                          Frame("execute", SP + "sqlalchemy/ext/asyncio/session.py", 461)),
               RUNNING, 9),
        Choice(handler + (Frame("health", APP, 141),), RUNNING, 1),
        Choice(LOOP_BASE + (Frame("_run", STD + "asyncio/events.py", 80),
                            Frame("data_received", SP + "uvicorn/protocols/http/httptools_impl.py",
                                  155)), RUNNING, 4),
    ]
    for k in range(variety):  # the CPU-bound part of summary(), spread over helper lines
        out.append(Choice(handler + (Frame("summary", APP, 90),
                                     Frame(f"compute_totals_{k}", APP, 12 + k % 50),
                                     Frame("<genexpr>", APP, 14 + k % 7)), RUNNING, 16 / variety))
    return out


def _worker_choices(variety: int) -> list[Choice]:
    pool = THREAD_BASE + (Frame("run", SP + "anyio/_backends/_asyncio.py", 967),)
    out = [Choice(pool + (Frame("get", STD + "queue.py", 171),
                          Frame("wait", STD + "threading.py", 327)), WAITING, 70)]
    for k in range(variety):
        out.append(Choice(pool + (Frame("create_item", APP, 60),
                                  Frame("dumps", STD + "json/__init__.py", 231),
                                  Frame("encode", STD + "json/encoder.py", 200 + k % 40)),
                          RUNNING, 30 / variety))
    return out


def _other_choices() -> list[Choice]:
    return [Choice(THREAD_BASE + (Frame("run", SP + "aiosqlite/core.py", 105),
                                  Frame("get", STD + "queue.py", 180)), WAITING, 1)]


THREADS = (  # tid offset, name, role, choices
    (0, "MainThread", ThreadRole.LOOP, _loop_choices),
    (1, "AnyIO worker thread", ThreadRole.WORKER, _worker_choices),
    (2, "Thread-1 (_connection_worker_thread)", ThreadRole.OTHER, lambda v: _other_choices()),
)

# endpoint -> (share of requests, median ms, error share, queries per request)
TRAFFIC = {
    ("GET", "/items/{item_id}"): (0.55, 3.0, 0.0, 1),
    ("POST", "/items"): (0.15, 14.0, 0.0, 1),
    ("GET", "/reports/summary"): (0.05, 420.0, 0.0, 0),
    ("GET", "/users/{user_id}/orders"): (0.15, 65.0, 0.04, 21),
    ("GET", "/health"): (0.08, 0.8, 0.0, 0),
    ("GET", "<unmatched>"): (0.02, 0.5, 0.0, 0),
}

FLAGS = [
    {"kind": "event_loop_blocked", "severity": "high", "route": "GET /reports/summary",
     "location": {"file": APP, "line": 87, "function": "summary"},
     "evidence": "the event loop spent 38% of the window inside summary() at main.py:87"
                 " (time.sleep)",
     "metric": {"blocked_fraction": 0.38},
     "suggestion": "await asyncio.sleep(...) or move the call to a thread with"
                   " run_in_threadpool"},
    {"kind": "n_plus_one", "severity": "medium", "route": "GET /users/{user_id}/orders",
     "location": {"file": APP, "line": 121, "function": "list_orders"},
     "evidence": "each request issues 20 near-identical queries"
                 " (SELECT * FROM orders WHERE id = ?)",
     "metric": {"queries_per_request": 21},
     "suggestion": "load the orders in one query (selectinload or WHERE id IN (...))"},
    {"kind": "slow_endpoint", "severity": "low", "route": "GET /reports/summary",
     "location": {"file": APP, "line": 84, "function": "summary"},
     "evidence": "p95 is 610 ms, above the 200 ms objective", "metric": {"p95_ms": 610.0},
     "suggestion": "see the event_loop_blocked flag of this route"},
]


def write_session(path: Path, *, seconds: float = 60.0, start: float = START,
                  window_s: float = 1.0, rate_hz: int = 100, rps: float = 40.0,
                  workers: int = 2, variety: int = 1, seed: int = 7,
                  flags: bool = True, requests: bool = True) -> Path:
    """Write a finished session to `path` and return it."""
    rnd = random.Random(seed)
    pids = [4100 + i for i in range(1, workers + 1)]
    exit_at = start + seconds * 0.8 if workers > 1 else None  # the last worker is recycled
    with SessionWriter(path) as writer:
        writer.set_meta(command="uvicorn app.main:app --workers 2", server="uvicorn",
                        python="3.11.7", rate_hz=rate_hz, slo_ms=200)
        writer.put_process(ProcessInfo(4100, None, "master", "uvicorn app.main:app", start))
        for pid in pids:
            gone = exit_at if pid == pids[-1] else None
            writer.put_process(ProcessInfo(pid, 4100, "worker", "uvicorn worker", start, gone))
            if requests:
                writer.put_routes(pid, ROUTES)
        choices = {tid: make(variety) for tid, _, _, make in THREADS}
        t = start
        while t < start + seconds - 1e-9:
            alive = [p for p in pids if exit_at is None or p != pids[-1] or t < exit_at]
            writer.put_window(_window(rnd, t, min(t + window_s, start + seconds), rate_hz,
                                      alive, choices))
            t += window_s
        writer.put_resources(_resources(rnd, start, seconds, pids, exit_at))
        if requests:
            writer.put_requests(make_requests(rnd, start, seconds, rps, pids))
        if flags:
            writer.replace_flags(Flag.from_json(f) for f in FLAGS)
        writer.flush(timeout=600)
    return path


def _window(rnd: random.Random, t0: float, t1: float, rate_hz: int, pids: Sequence[int],
            choices: dict[int, list[Choice]]) -> StackWindow:
    n = max(1, round((t1 - t0) * rate_hz))
    samples = []
    roles = {}
    for pid in pids:
        for tid_off, name, role, _ in THREADS:
            tid = pid * 10 + tid_off
            roles[(pid, tid)] = role
            options = choices[tid_off]
            picks = Counter(rnd.choices(range(len(options)), [c.weight for c in options], k=n))
            for index, count in sorted(picks.items()):
                c = options[index]
                samples.append(StackSample(pid, tid, name, c.frames, count, c.state,
                                           c.state is RUNNING))
    return StackWindow(t0, t1, rate_hz, tuple(samples), 0, roles)


def _resources(rnd: random.Random, start: float, seconds: float, pids: Sequence[int],
               exit_at: float | None) -> list[ResourceSample]:
    out = []
    for i in range(int(seconds)):
        ts = start + i
        for n, pid in enumerate(pids):
            if exit_at is not None and pid == pids[-1] and ts >= exit_at:
                continue
            rss = int((70 + n * 6 + i * 0.02 * (n + 1)) * 1e6)
            out.append(ResourceSample(ts, pid, 35 + 20 * math.sin(i / 9 + n) + rnd.random() * 8,
                                      rss, 4 + (i // 20) % 2, 22 + n + (i // 7) % 3))
    return out


def make_requests(rnd: random.Random, start: float, seconds: float, rps: float,
                  pids: Sequence[int]) -> list[RequestRecord]:
    out = []
    endpoints = list(TRAFFIC)
    weights = [TRAFFIC[e][0] for e in endpoints]
    for i in range(int(seconds * rps)):
        method, route = rnd.choices(endpoints, weights)[0]
        _, median, errors, queries = TRAFFIC[(method, route)]
        duration = median * math.exp(rnd.gauss(0, 0.35))
        failed = rnd.random() < errors
        stats = ()
        if queries > 1:
            stats = (QueryStat("SELECT * FROM users WHERE id = ?", 1, 0.4),
                     QueryStat("SELECT * FROM orders WHERE id = ?", queries - 1,
                               duration * 0.6, APP, 121))
        elif queries == 1:
            stats = (QueryStat("SELECT * FROM items WHERE id = ?", 1, duration * 0.3),)
        out.append(RequestRecord(
            pids[i % len(pids)], start + i / rps, duration, method, route,
            500 if failed else (404 if route == "<unmatched>" else 200),
            "sqlalchemy.exc.OperationalError" if failed else None,
            APP if failed else None, 123 if failed else None, stats))
    return out
