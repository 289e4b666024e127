"""A small session with the kernel's CPU time: one endpoint sleeps, one computes.

`GET /sleep` is a sync handler that spends its time in `time.sleep` on a thread-pool worker
(BLOCKED samples, a sliver of CPU before the sleep); `GET /compute` is an async handler burning
CPU on the event loop (RUNNING samples), partly under the agent's profiler (tool work, never an
endpoint's CPU). The loop also runs the framework's own code (the server's share), under the
app's own ASGI middleware passing each request on (its line above the handler's frame, so
never where the time below it goes). The measured
CPU differs from samples / rate on purpose, and changes over the session, so a figure that
counted samples instead of CPU, or ignored the range, would be caught. One idle aiosqlite thread
is not measured in the odd windows (the analysis counts 1 / rate per RUNNING sample there).
"""

from __future__ import annotations

from pathlib import Path

from apiscope.collectors.native import native_cpu
from apiscope.model import (
    Frame,
    ProcessInfo,
    RequestRecord,
    ResourceSample,
    RouteInfo,
    SampleState,
    StackSample,
    StackWindow,
    ThreadRole,
)
from apiscope.store import SessionWriter

T0 = 1_795_100_000.0
PID = 5151
LOOP, POOL, SQLITE = 1, 2, 3
APP = "/srv/clock/clock/main.py"
STD = "/usr/lib/python3.11"
SITE = "/srv/venv/lib/python3.11/site-packages"
SECONDS = 20
RATE = 100

ROUTES = [RouteInfo("GET", "/sleep", "clock.main:nap", APP, 10, False),
          RouteInfo("GET", "/compute", "clock.main:crunch", APP, 20, True)]

LOOP_BASE = (Frame("run", f"{STD}/asyncio/runners.py", 118),
             Frame("_run_once", f"{STD}/asyncio/base_events.py", 1922))
ASGI = (*LOOP_BASE, Frame("_run", f"{STD}/asyncio/events.py", 80),
        Frame("app", f"{SITE}/starlette/routing.py", 70))
SELECT = (*LOOP_BASE, Frame("select", f"{STD}/selectors.py", 468))
POOL_BASE = (Frame("_bootstrap", f"{STD}/threading.py", 995),
             Frame("run", f"{SITE}/anyio/_backends/_asyncio.py", 967))
POOL_IDLE = (*POOL_BASE, Frame("get", f"{STD}/queue.py", 171))
NAP = (*POOL_BASE, Frame("nap", APP, 12))
SLEEPING = (*NAP, Frame("sleep", "<built-in>", 0))
MIDDLEWARE = Frame("Timing.__call__", "/srv/clock/clock/middleware.py", 12)
CRUNCH = (*ASGI, MIDDLEWARE, Frame("crunch", APP, 22), Frame("digits", APP, 30))
PROFILED = (*ASGI, MIDDLEWARE, Frame("crunch", APP, 22),
            Frame("sample", f"{SITE}/apiscope/agent/profiling.py", 88))
SERVER = (*ASGI, MIDDLEWARE, Frame("serialize_response", f"{SITE}/fastapi/routing.py", 140))
SQLITE_RUN = (Frame("_bootstrap", f"{STD}/threading.py", 995),
              Frame("_connection_worker_thread", f"{SITE}/aiosqlite/core.py", 59))

ROLES = {(PID, LOOP): ThreadRole.LOOP, (PID, POOL): ThreadRole.WORKER,
         (PID, SQLITE): ThreadRole.OTHER}


HASHING = (*NAP, Frame("verify_secret", f"{SITE}/argon2/low_level.py", 160))


def window_samples(i: int, lanes: bool = False) -> tuple[StackSample, ...]:
    crunch = 30 + 2 * i  # the compute endpoint gets busier over the session

    def s(tid: int, frames: tuple[Frame, ...], count: int,
          state: SampleState = SampleState.RUNNING) -> StackSample:
        return StackSample(PID, tid, {LOOP: "MainThread"}.get(tid, f"Thread-{tid}"), frames,
                           count, state, None)

    hashing = (s(POOL, HASHING, 10, SampleState.BLOCKED),) if lanes else ()
    return (s(LOOP, CRUNCH, crunch), s(LOOP, PROFILED, 4), s(LOOP, SERVER, 10),
            s(LOOP, SELECT, 100 - crunch - 14, SampleState.WAITING),
            s(POOL, NAP, 2), s(POOL, SLEEPING, 80 - len(hashing) * 10, SampleState.BLOCKED),
            *hashing, s(POOL, POOL_IDLE, 18, SampleState.WAITING),
            s(SQLITE, SQLITE_RUN, 3))


def thread_cpu(i: int) -> dict[tuple[int, int], float]:
    """What the kernel measured: not samples / rate (py-spy missed some, threads share cores)."""
    cpu = {(PID, LOOP): 0.9 * (44 + 2 * i) / RATE, (PID, POOL): 0.004}
    if i % 2 == 0:
        cpu[(PID, SQLITE)] = 0.001
    return cpu


def write_cpu_session(path: Path, lanes: float = 0.0) -> Path:
    """`lanes`: CPU seconds a window of threads Python does not run (argon2's), which the
    sleeping route's pool thread waits for in part of its windows."""
    with SessionWriter(path, batch_seconds=0.01) as writer:
        writer.set_meta(command="uvicorn clock.main:app", pids=[PID], server="uvicorn",
                        python="3.11.7", rate_hz=RATE, start=T0, end=T0 + SECONDS)
        writer.put_process(ProcessInfo(PID, None, "single", "uvicorn clock.main:app", T0))
        writer.put_routes(PID, ROUTES)
        for i in range(SECONDS):
            cpu = thread_cpu(i)
            # threads that ended within the window used CPU too: the process figure is more
            process = {PID: sum(cpu.values()) + 0.03 + lanes}
            samples = window_samples(i, lanes > 0)
            # The sampler's own placement of what threads Python does not run used.
            native = native_cpu(samples, RATE, cpu, process, ROLES) if lanes else {}
            writer.put_window(StackWindow(T0 + i, T0 + i + 1, RATE, samples, threads=ROLES,
                                          thread_cpu=cpu, process_cpu=process,
                                          native_cpu=native))
            writer.put_requests([
                RequestRecord(PID, T0 + i + 0.1, 800.0, "GET", "/sleep", 200),
                *(RequestRecord(PID, T0 + i + k / 10, 40.0, "GET", "/compute", 200)
                  for k in range(5))])
            writer.put_resources([ResourceSample(T0 + i + 0.5, PID, 50.0, 60_000_000, 3, 20)])
        writer.flush()
    return path
