"""Small synthetic sessions built from the model's dataclasses and written with SessionWriter.

`healthy()` is a busy app with nothing wrong: 30 s at 100 Hz, a loop thread mostly waiting,
two pool workers, three idle aiosqlite threads, thousands of fast requests, a memory warm-up
followed by a plateau. Tests add one pathology at a time and check exactly that flag appears.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from apiscope.collectors.native import native_cpu
from apiscope.model import (
    Frame,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    QueryStat,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    SampleState,
    StackSample,
    StackWindow,
    StoredProfile,
    ThreadPoolSample,
    ThreadRole,
    ThreadSpan,
    UnfinishedRequest,
)
from apiscope.store import SessionReader, SessionWriter

T0 = 1_795_000_000.0  # 2026-11-18T...Z, a fixed instant: reports are deterministic
PID = 4242
APP = "/srv/shop/shop/main.py"
STD = "/usr/lib/python3.11"
SITE = "/srv/venv/lib/python3.11/site-packages"
LOOP_TID, W1, W2 = 1, 2, 3
SQLITE_TIDS = (4, 5, 6)

ROUTES = [
    RouteInfo("GET", "/items/{item_id}", "shop.main:read_item", APP, 10, True),
    RouteInfo("HEAD", "/items/{item_id}", "shop.main:read_item", APP, 10, True),
    RouteInfo("POST", "/items", "shop.main:create_item", APP, 20, False),
    RouteInfo("GET", "/health", "shop.main:health", APP, 30, True),
    RouteInfo("GET", "/reports/summary", "shop.main:summary", APP, 80, True),
    RouteInfo("GET", "/orders", "shop.main:list_orders", APP, 110, True),
    RouteInfo("GET", "/export", "shop.main:export", APP, 130, False),
]

LOOP_BASE = (Frame("run", f"{STD}/asyncio/runners.py", 118),
             Frame("run_forever", f"{STD}/asyncio/base_events.py", 607),
             Frame("_run_once", f"{STD}/asyncio/base_events.py", 1922))
SELECT = (*LOOP_BASE, Frame("select", f"{STD}/selectors.py", 468))
ASGI = (Frame("_run", f"{STD}/asyncio/events.py", 80),
        Frame("run_asgi", f"{SITE}/uvicorn/protocols/http/httptools_impl.py", 409),
        Frame("app", f"{SITE}/starlette/routing.py", 70))
WORKER_BASE = (Frame("_bootstrap", f"{STD}/threading.py", 995),
               Frame("run", f"{SITE}/anyio/_backends/_asyncio.py", 967))
WORKER_IDLE = (*WORKER_BASE, Frame("get", f"{STD}/queue.py", 171))
SQLITE_IDLE = (Frame("_bootstrap", f"{STD}/threading.py", 995),
               Frame("_connection_worker_thread", f"{SITE}/aiosqlite/core.py", 59),
               Frame("get", f"{STD}/queue.py", 180))


def app(function: str, line: int) -> Frame:
    return Frame(function, APP, line)


def on_loop(*frames: Frame) -> tuple[Frame, ...]:
    return (*LOOP_BASE, *ASGI, *frames)


def on_worker(*frames: Frame) -> tuple[Frame, ...]:
    return (*WORKER_BASE, *frames)


def sample(tid: int, frames: tuple[Frame, ...], count: int,
           state: SampleState = SampleState.RUNNING, gil: bool | None = None) -> StackSample:
    name = {LOOP_TID: "MainThread"}.get(tid, f"Thread-{tid}")
    return StackSample(PID, tid, name, frames, count, state, gil)


def idle_loop(count: int) -> StackSample:
    return sample(LOOP_TID, SELECT, count, SampleState.WAITING)


def idle_worker(tid: int, count: int) -> StackSample:
    return sample(tid, WORKER_IDLE, count, SampleState.WAITING)


def request(endpoint: str, start: float, ms: float, status: int = 200,
            **extra: Any) -> RequestRecord:
    method, route = endpoint.split(" ", 1)
    return RequestRecord(PID, start, ms, method, route, status, **extra)


@dataclass
class Spec:
    """A session to write; `per_window` are the stack samples of every window (`window`
    seconds long, 1 unless the budget lengthened them)."""

    seconds: int = 30
    rate: int = 100
    window: float = 1.0
    per_window: list[StackSample] = field(default_factory=list)
    extra_windows: dict[int, list[StackSample]] = field(default_factory=dict)
    requests: list[RequestRecord] = field(default_factory=list)
    resources: list[ResourceSample] = field(default_factory=list)
    threadpool: list[ThreadPoolSample] = field(default_factory=list)
    profiles: list[StoredProfile] = field(default_factory=list)
    meta: dict[str, Any] = field(default_factory=dict)
    routes: list[RouteInfo] = field(default_factory=lambda: list(ROUTES))
    # The kernel's CPU time per window and thread, as the sampler records it: each thread's
    # RUNNING samples / rate (so RUNNING is what was measured), the process the sum plus
    # `extra_cpu` seconds a window (threads that were not sampled).
    measured: bool = False
    extra_cpu: float = 0.0
    runqueue: float = 0.0  # each thread's run-queue seconds a window, when measured
    host_busy: float | None = None  # the host's CPUs' busy share in every window, when measured
    loop_stalls: list[LoopStall] = field(default_factory=list)
    loop_lag: list[LoopLagSample] = field(default_factory=list)
    gil: list[GilSample] = field(default_factory=list)
    unfinished: list[UnfinishedRequest] = field(default_factory=list)
    # The collector's looks at threads for GIL waits, every window: (looks, on the GIL).
    gil_looks: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
    # Looks at which each (pid, tid) held the GIL while another thread waited, every window.
    gil_holders: dict[tuple[int, int], int] = field(default_factory=dict)
    # The agent's looks at pool threads busy with endpoints' handed-off work.
    offloaded: list[OffloadLooks] = field(default_factory=list)
    # The threads that ran endpoints' handed calls (Django's thread per request).
    thread_spans: list[ThreadSpan] = field(default_factory=list)

    def roles(self) -> dict[tuple[int, int], ThreadRole]:
        roles = {(PID, LOOP_TID): ThreadRole.LOOP, (PID, W1): ThreadRole.WORKER,
                 (PID, W2): ThreadRole.WORKER}
        roles.update({(PID, t): ThreadRole.WORKER for t in range(10, 20)})
        return roles

    def cpu(self, samples: tuple[StackSample, ...]) -> dict[tuple[int, int], float]:
        out: dict[tuple[int, int], float] = {}
        for s in samples:
            ran = s.count / self.rate if s.state is SampleState.RUNNING else 0.0
            out[(s.pid, s.tid)] = out.get((s.pid, s.tid), 0.0) + ran
        return out

    def write(self, path: Path) -> Path:
        with SessionWriter(path, batch_seconds=0.01) as writer:
            writer.set_meta(command="uvicorn shop.main:app", pids=[PID], server="uvicorn",
                            python="3.11.7", rate_hz=self.rate, start=T0,
                            end=T0 + self.seconds, **self.meta)
            writer.put_routes(PID, self.routes)
            for i in range(round(self.seconds / self.window)):
                samples = tuple(self.per_window + self.extra_windows.get(i, []))
                cpu = self.cpu(samples) if self.measured else {}
                process = {PID: sum(cpu.values()) + self.extra_cpu} if self.measured else {}
                waits = {key: self.runqueue for key in cpu}
                start = T0 + i * self.window
                # The CPU of threads Python does not run, placed as the sampler does.
                native = native_cpu(samples, self.rate, cpu, process, self.roles())
                writer.put_window(StackWindow(start, start + self.window, self.rate, samples,
                                              threads=self.roles(), thread_cpu=cpu,
                                              process_cpu=process, thread_runqueue=waits,
                                              thread_gil=self.gil_looks, native_cpu=native,
                                              gil_holders=self.gil_holders,
                                              host_busy=self.host_busy))
            writer.put_loop_stalls(self.loop_stalls)
            writer.put_loop_lag(self.loop_lag)
            writer.put_gil(self.gil)
            writer.put_unfinished(self.unfinished)
            writer.put_offloaded(self.offloaded)
            writer.put_thread_spans(self.thread_spans)
            writer.put_requests(self.requests)
            writer.put_resources(self.resources)
            writer.put_threadpool(self.threadpool)
            for p in self.profiles:
                writer.put_profile(PID, p.start, p.method, p.route, p.duration_ms, p.tree)
            writer.flush()
        return path


def resources(seconds: int, rss_mb: list[float]) -> list[ResourceSample]:
    return [ResourceSample(T0 + i + 0.5, PID, 35.0, int(rss_mb[i] * 1024 * 1024), 6 + i % 2,
                           30) for i in range(seconds)]


def healthy(seed: int = 1, *, probe: bool = True) -> Spec:
    """A busy, healthy app: must raise no flag.

    `probe`: whether the sampler told on-CPU from off-CPU. Without its activity probe, py-spy's
    stacks alone make idle aiosqlite threads (in queue.get, role OTHER) look RUNNING.
    """
    rnd = random.Random(seed)
    spec = Spec()
    idle = SampleState.BLOCKED if probe else SampleState.RUNNING
    spec.per_window = [
        idle_loop(60),
        sample(LOOP_TID, on_loop(), 24),  # the framework's own work on the loop
        sample(LOOP_TID, on_loop(app("read_item", 12)), 8),
        sample(LOOP_TID, on_loop(app("health", 31)), 4),
        sample(LOOP_TID, on_loop(app("list_orders", 114)), 4),
        idle_worker(W1, 95), sample(W1, on_worker(app("create_item", 22)), 5),
        idle_worker(W2, 95), sample(W2, on_worker(app("create_item", 23)), 5),
        *[sample(t, SQLITE_IDLE, 100, idle) for t in SQLITE_TIDS],
    ]
    for i in range(3000):
        ms = 900.0 if i == 1500 else rnd.uniform(1.0, 8.0)  # one slow request among thousands
        status = 500 if i == 7 else (404 if i % 97 == 0 else 200)
        exc = {"exc_type": "KeyError", "exc_file": APP, "exc_line": 14} if status == 500 else {}
        spec.requests.append(request("GET /items/{item_id}", T0 + i * 0.01, ms, status,
                                     queries=(QueryStat("SELECT * FROM items WHERE id = ?",
                                                        1, 0.3),), **exc))
    for i in range(600):
        spec.requests.append(request("POST /items", T0 + i * 0.05, rnd.uniform(3.0, 9.0), 201))
    for i in range(300):
        spec.requests.append(request("GET /health", T0 + i * 0.1, rnd.uniform(0.3, 1.0)))
    for i in range(300):
        queries = (QueryStat("SELECT * FROM orders LIMIT ?", 1, 0.5),
                   QueryStat("SELECT * FROM customers WHERE id IN (?)", 1, 0.4))
        if i == 100:  # one odd request repeating a statement is not an N+1 pattern
            queries += (QueryStat("SELECT * FROM lines WHERE order_id = ?", 30, 9.0, APP, 120),)
        spec.requests.append(request("GET /orders", T0 + i * 0.1, rnd.uniform(4.0, 15.0),
                                     queries=queries))
    rss = [50 + min(i, 8) * 1.5 + rnd.uniform(-0.3, 0.3) for i in range(30)]  # warm-up, plateau
    spec.resources = resources(30, rss)
    spec.threadpool = [ThreadPoolSample(T0 + i + 0.5, PID, 40, rnd.randint(0, 2), 0)
                       for i in range(30)]
    return spec


def write_and_open(spec: Spec, path: Path) -> SessionReader:
    return SessionReader(spec.write(path))
