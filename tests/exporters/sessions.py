"""Small session files with known sample counts, written with the real SessionWriter."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from apiscope.model import (
    Frame,
    ProcessInfo,
    RouteInfo,
    SampleState,
    StackSample,
    StackWindow,
    ThreadRole,
)
from apiscope.store import SessionWriter

T0 = 1_780_000_000.0  # the first window's start (epoch seconds)
APP = "/srv/shop/main.py"
LIB = "/opt/venv/lib/python3.11/site-packages/uvicorn/server.py"

RUN = Frame("run", LIB, 60)
LOOP = Frame("BaseEventLoop._run_once", "asyncio/base_events.py", 1922)
SELECT = Frame("EpollSelector.select", "selectors.py", 468)
READ_ITEM = Frame("read_item", APP, 12)
LOAD = Frame("load <rows> & co", APP, 30)  # a name that needs escaping
HEALTH = Frame("health", APP, 40)
WORKER = Frame("_worker", "concurrent/futures/thread.py", 83)

ITEMS_STACK = (RUN, LOOP, READ_ITEM)
ITEMS_LOAD_STACK = (RUN, LOOP, READ_ITEM, LOAD)
HEALTH_STACK = (RUN, LOOP, HEALTH)
IDLE_STACK = (RUN, LOOP, SELECT)
WORKER_STACK = (WORKER,)

ROUTES = [
    RouteInfo("GET", "/items/{item_id}", "main:read_item", APP, 11, True),
    RouteInfo("GET", "/health", "main:health", APP, 39, True),
]

# (window offset s, pid, tid, stack, count, state, gil)
ROWS: list[tuple[float, int, int, tuple[Frame, ...], int, SampleState, bool | None]] = [
    (0, 100, 1, ITEMS_STACK, 30, SampleState.RUNNING, True),
    (0, 100, 1, ITEMS_LOAD_STACK, 20, SampleState.RUNNING, True),
    (0, 100, 1, IDLE_STACK, 40, SampleState.WAITING, False),
    (0, 100, 2, WORKER_STACK, 5, SampleState.WAITING, False),
    (10, 100, 1, ITEMS_LOAD_STACK, 10, SampleState.RUNNING, False),
    (10, 100, 1, HEALTH_STACK, 7, SampleState.RUNNING, True),
    (10, 200, 3, ITEMS_STACK, 3, SampleState.BLOCKED, None),
    (20, 200, 3, IDLE_STACK, 50, SampleState.WAITING, False),
    (20, 200, 3, HEALTH_STACK, 2, SampleState.RUNNING, True),
    (20, 100, 1, ITEMS_STACK, 4, SampleState.RUNNING, True),  # merges with the first row
]
THREADS = {(100, 1): ("MainThread", ThreadRole.LOOP), (100, 2): ("worker-1", ThreadRole.WORKER),
           (200, 3): ("MainThread", ThreadRole.LOOP)}


def total(**match: object) -> int:
    """Sum of ROWS counts whose fields equal the given values (offset, pid, tid, stack, ...)."""
    names = ("offset", "pid", "tid", "stack", "count", "state", "gil")
    return sum(row[4] for row in ROWS
               if all(row[names.index(k)] == v for k, v in match.items()))


def write_session(path: Path, rows: list[tuple[float, int, int, tuple[Frame, ...], int,
                                                SampleState, bool | None]] = ROWS,
                  routes: Sequence[RouteInfo] = ROUTES) -> Path:
    with SessionWriter(path) as writer:
        writer.set_meta(started=T0)
        for pid in (100, 200):
            writer.put_process(ProcessInfo(pid, None, "single", "uvicorn shop.main:app", T0))
            writer.put_routes(pid, list(routes))
        for offset in sorted({row[0] for row in rows}):
            samples = tuple(
                StackSample(pid, tid, THREADS[(pid, tid)][0], stack, count, state, gil)
                for off, pid, tid, stack, count, state, gil in rows if off == offset)
            roles = {key: role for key, (_, role) in THREADS.items()}
            writer.put_window(StackWindow(T0 + offset, T0 + offset + 1, 100, samples,
                                          threads=roles))
        writer.flush()
    return path
