"""The agent's watchdogs on a real event loop and real threads: stalls, lag and the GIL wait."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import json
import os
import random
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from apiscope.agent.gilwatch import GilMeter, GilWatchdog, gil_futex
from apiscope.agent.looppass import PassClock
from apiscope.agent.loopwatch import CATCH_SHARE
from apiscope.agent.schedstat import SchedStat, percentile
from apiscope.agent.watchdog import WatchdogOptions, Watchdogs
from apiscope.collectors.agent_client import batch_from_json
from apiscope.collectors.gillooks import GIL_SPAN
from apiscope.collectors.oncpu import LineLooks
from apiscope.model import Frame, GilSample, LoopLagSample, LoopStall
from apiscope.store import SessionReader, SessionWriter
from tests.pythons.targets import target_python
from tests.support import require_found, wait_until

SRC = Path(__file__).resolve().parents[2] / "src"

WATCHDOG_THREADS = ("apiscope-loop-watchdog", "apiscope-gil-watchdog")


def watchdog_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name in WATCHDOG_THREADS]


class LoopThread:
    """A real asyncio loop running in its own thread, watched by a `Watchdogs`."""

    def __init__(self, options: WatchdogOptions) -> None:
        self.loop = asyncio.new_event_loop()
        self.watchdogs = Watchdogs(options)
        self.thread = threading.Thread(target=self._run, name="test-loop", daemon=True)
        self._ready = threading.Event()
        self.stalls: list[dict[str, Any]] = []
        self.lags: list[dict[str, Any]] = []

    def _run(self) -> None:
        async def first_request() -> None:
            self.watchdogs.see_loop()  # what the middleware does on each request

        self.loop.run_until_complete(first_request())
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> None:
        self.thread.start()
        assert self._ready.wait(10)
        self.watchdogs.start()

    def call(self, fn: Callable[[], object]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def pull(self) -> dict[str, Any]:
        data = self.watchdogs.pull()
        self.stalls.extend(data["stalls"])
        self.lags.extend(data["loops"])
        return data

    def probes_after(self, count: int) -> Callable[[], bool]:
        """A condition: the watchdog has checked the loop `count` more times."""
        target = sum(lag["probes"] for lag in self.lags) + count

        def done() -> bool:
            self.pull()
            return sum(lag["probes"] for lag in self.lags) >= target

        return done

    def close(self) -> None:
        self.watchdogs.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


FAST = WatchdogOptions(loop_interval=0.02, stall_threshold=0.025, sample_interval=0.01,
                       gil_interval=0.05)


PROBED = WatchdogOptions(time_passes=False)  # how a loop without a Python selector is watched


def _running(options: WatchdogOptions) -> Iterator[LoopThread]:
    lt = LoopThread(options)
    lt.start()
    yield lt
    lt.close()
    assert watchdog_threads() == []


@pytest.fixture(params=[FAST, WatchdogOptions(), PROBED], ids=["fast", "defaults", "probed"])
def loop_thread(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    yield from _running(request.param)


@pytest.fixture(params=[FAST, WatchdogOptions()], ids=["fast", "defaults"])
def timed_loop_thread(request: pytest.FixtureRequest) -> Iterator[LoopThread]:
    """A loop whose passes are timed: a probed one sees stalls only, not shorter holds."""
    yield from _running(request.param)


def sleeper() -> None:
    time.sleep(0.2)  # the stall's line


def spinner() -> None:
    end = time.thread_time() + 0.2  # 200 ms of CPU, however busy the machine is
    while time.thread_time() < end:
        pass


def test_a_sleep_on_the_loop_is_one_stall_at_the_sleep_line(loop_thread: LoopThread) -> None:
    wait_until(loop_thread.probes_after(3), what="the watchdog to probe the loop")
    loop_thread.stalls.clear()
    loop_thread.call(sleeper)
    wait_until(lambda: loop_thread.pull() and loop_thread.stalls, timeout=10, what="a stall")
    wait_until(loop_thread.probes_after(10), what="probes after the stall")

    assert len(loop_thread.stalls) == 1
    stall = loop_thread.stalls[0]
    # Measured from when the loop was last seen running: at most one probe interval early.
    interval_ms = loop_thread.watchdogs.options.loop_interval * 1000
    assert 190 <= stall["duration_ms"] <= 200 + interval_ms + 130
    assert stall["start"] <= time.time() and stall["tid"] == loop_thread.thread.native_id
    function, file, line = stall["frames"][-1]
    assert (function, file, line) == ("sleeper", __file__, sleeper.__code__.co_firstlineno + 1)
    assert [f[0] for f in stall["frames"][-3:-1]] == ["BaseEventLoop._run_once", "Handle._run"]
    assert stall["cpu_ms"] is not None and stall["cpu_ms"] < 25  # asleep: no CPU
    # ... and the kernel said so at the looks the watchdog took during it
    # (the first look is taken as the probe is posted, maybe just before the sleep begins)
    assert stall["activity"].get("sleep", 0) >= 1
    assert stall["activity"].get("sleep", 0) >= stall["activity"].get("cpu", 0)


@pytest.fixture
def probed_loop_thread() -> Iterator[LoopThread]:
    yield from _running(PROBED)


def test_a_probed_loop_tells_one_tasks_hold_from_a_crowd(
        probed_loop_thread: LoopThread) -> None:
    # A loop without a Python selector (uvloop) is probed: a late probe waited behind what the
    # loop ran. One task computing 200 ms is a hold; forty tasks of 1.5 ms each in a row
    # (a saturated server's requests) are many, whichever one a look happened to see.
    lt = probed_loop_thread
    wait_until(lt.probes_after(3), what="the watchdog to probe the loop")
    lt.stalls.clear()

    async def handler() -> None:
        spinner()

    lt.call(lambda: lt.loop.create_task(handler()))
    wait_until(lambda: lt.pull() and lt.stalls, timeout=10, what="a stall")
    (hold,) = lt.stalls
    assert hold["held"] == "one" and hold["frames"][-1][0] == "spinner", hold["activity"]

    def crowd() -> None:
        for _ in range(40):
            asyncio.get_running_loop().create_task(quick_step())

    passes = passes_of(lt, crowd, 30, seed=3)
    wait_until(lt.probes_after(2), what="the last crowd to have run")  # none left pending
    assert len(passes) >= 3  # crowds put on the loop back to back merge into longer stalls
    # A step the host kept off its CPU may be seen at two looks: only one that ran all along
    # would be taken for a hold.
    ones = [s for s in passes if s["held"] == "one"]
    assert not [s for s in ones if s["cpu_ms"] is not None
                and s["cpu_ms"] > s["duration_ms"] - 5 and s["duration_ms"] > 40], ones
    many = [s for s in passes if s["held"] == "many"]
    assert len(many) >= 2 and all(s["frames"] == [] for s in many)


def test_a_computation_on_the_loop_uses_cpu_all_along(loop_thread: LoopThread) -> None:
    wait_until(loop_thread.probes_after(3), what="the watchdog to probe the loop")
    loop_thread.stalls.clear()
    loop_thread.call(spinner)
    wait_until(lambda: loop_thread.pull() and loop_thread.stalls, timeout=10, what="a stall")

    (stall,) = loop_thread.stalls
    assert stall["frames"][-1][0] == "spinner"
    # 200 ms of CPU. The watchdog reads the loop thread's CPU clock from its first look at the
    # pass and scales what it used since to the whole pass: on a host that gave the thread
    # less of a CPU while it looked than before, that reads low (180 ms in one CI run).
    assert 160 <= stall["cpu_ms"] <= stall["duration_ms"] + 1
    # on a CPU, waiting for one, or taking the GIL back from the watchdog that looks: never
    # asleep, and never on a lock of its own
    assert stall["activity"] and set(stall["activity"]) <= {"cpu", "queue", "gil", "nogil"}
    # Python holds the GIL: the watchdog, as it wakes, waits a switch interval for it, and
    # finds it free ("nogil") at a few looks at most, where the loop thread had let it go.
    activity = Counter(stall["activity"])
    assert activity["nogil"] < (activity["cpu"] + activity["nogil"]) / 2 or \
        activity["nogil"] <= 1, activity


def test_a_stall_names_the_route_of_the_request_that_held_the_loop(
        loop_thread: LoopThread) -> None:
    # A request whose route spins on the loop, served through the agent's middleware: the
    # watchdog finds the request's scope in the loop thread's frames and names its route, so
    # a hold in a framework's own work for it (no line of the app running) is still that
    # route's. A stall of no request (a plain callback) names none.
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from apiscope.agent.middleware import AgentMiddleware
    from apiscope.agent.recorder import Recorder

    async def slow(request: Any) -> PlainTextResponse:
        spinner()
        return PlainTextResponse("done")

    app = AgentMiddleware(Starlette(routes=[Route("/slow/{n}", slow)]), Recorder(),
                          watchdogs=loop_thread.watchdogs)

    async def get(path: str) -> None:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await app({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                   "root_path": "", "query_string": b"", "headers": [], "scheme": "http",
                   "server": ("test", 80), "client": ("test", 1), "http_version": "1.1",
                   "asgi": {"version": "3.0"}}, receive, send)
        assert sent[0]["status"] == 200

    wait_until(loop_thread.probes_after(3), what="the watchdog to probe the loop")
    loop_thread.stalls.clear()
    asyncio.run_coroutine_threadsafe(get("/slow/7"), loop_thread.loop).result(10)
    loop_thread.call(spinner)
    wait_until(lambda: loop_thread.pull() and len(loop_thread.stalls) >= 2, timeout=10,
               what="two stalls")

    served, plain = loop_thread.stalls[:2]
    assert served["route"] == "GET /slow/{n}"
    assert [f[0] for f in served["frames"][-2:]] == ["test_a_stall_names_the_route_of_the_"
                                                    "request_that_held_the_loop.<locals>.slow",
                                                    "spinner"]
    assert "route" not in plain and plain["frames"][-1][0] == "spinner"


# Run by a target's interpreter (`test_the_tasks_a_request_started_are_noted_with_its_route`):
# a real loop watched by the agent's watchdogs, and requests through its middleware.
TASKS_SCRIPT = """
import asyncio, json, sys, time
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.recorder import Recorder
from apiscope.agent.watchdog import WatchdogOptions, Watchdogs

async def crunch(seconds):
    # CPU on the loop in short steps (none a stall), as a task a request started.
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        step = time.thread_time() + 0.002
        while time.thread_time() < step:
            pass
        await asyncio.sleep(0)

async def crunch_more(seconds):
    await crunch(seconds)

async def complete(request):
    await asyncio.create_task(crunch(0.6))
    return PlainTextResponse("done")

async def more(request):
    await asyncio.gather(crunch_more(0.3), crunch_more(0.3))
    return PlainTextResponse("done")

watchdogs = Watchdogs(WatchdogOptions(time_passes=sys.argv[1] == "timed"))
app = AgentMiddleware(Starlette(routes=[Route("/complete/{n}", complete), Route("/more", more)]),
                      Recorder(), watchdogs=watchdogs)

async def get(path):
    sent = []
    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}
    async def send(message):
        sent.append(message)
    await app({"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
               "root_path": "", "query_string": b"", "headers": [], "scheme": "http",
               "server": ("test", 80), "client": ("test", 1), "http_version": "1.1",
               "asgi": {"version": "3.0"}}, receive, send)
    assert sent[0]["status"] == 200

async def main():
    watchdogs.see_loop()
    watchdogs.start()
    await asyncio.sleep(0.3)
    await get("/complete/1")
    await get("/more")
    await asyncio.create_task(crunch(0.3))  # no request's
    tasks = watchdogs.pull()["tasks"]
    watchdogs.stop()
    loop = asyncio.get_running_loop()
    print(json.dumps({"tasks": tasks, "factory_left": loop.get_task_factory() is not None}))

asyncio.run(main())
"""


@pytest.mark.parametrize("version", ["3.9", "3.12"])
@pytest.mark.parametrize("mode", ["timed", "probed"])
def test_the_tasks_a_request_started_are_counted_with_its_route(version: str, mode: str,
                                                                tmp_path: Path) -> None:
    # A task a request starts shows no frame of the request's handler in a stack sample: its
    # root is the function the task runs. While a loop is watched its tasks are made by the
    # watchdog's factory, which counts those a request started under that function with the
    # request's route, so that the analysis can charge those stacks' CPU to the route. A task
    # of no request's is not counted, and the loop gets its own factory back at the end.
    python = require_found(target_python, version)
    script = tmp_path / "tasks.py"
    script.write_text(TASKS_SCRIPT)
    run = subprocess.run([str(python), str(script), mode], capture_output=True, text=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)}, check=False)
    assert run.returncode == 0, run.stderr
    answer = json.loads(run.stdout)
    assert sorted(answer["tasks"]) == [[str(script), "crunch", "GET /complete/{n}", 1],
                                       [str(script), "crunch_more", "GET /more", 2]]
    assert answer["factory_left"] is False


def test_a_look_in_the_collectors_callback_names_the_frame_that_allocated() -> None:
    # A look takes the GIL where the loop thread next runs Python: in a validator's C code
    # that allocates, that is the agent's own collector callback, far more often than it runs.
    # The look names the frame that allocated instead.
    import queue

    from apiscope.agent.gcpauses import GcPauses
    from apiscope.agent.loopwatch import _loop_frame

    release: queue.SimpleQueue[float] = queue.SimpleQueue()
    pauses = GcPauses(clock=release.get)  # C code: the callback's frame is the leaf

    def allocate() -> None:
        pauses._callback("start", {})  # as the collector calls it, set off here

    thread = threading.Thread(target=allocate, daemon=True)
    thread.start()
    try:
        wait_until(lambda: getattr(sys._current_frames().get(thread.ident or 0), "f_code",
                                   None) is GcPauses._callback.__code__,
                   what="the callback to run")
        frame = _loop_frame(thread.ident or 0)
        assert frame is not None and frame.f_code is allocate.__code__
    finally:
        release.put(0.0)
        thread.join(5)


def test_a_pass_the_garbage_collector_held_is_nobodys(timed_loop_thread: LoopThread) -> None:
    # A heap the collector takes 150 ms or more to walk (a full collection of a large app).
    heap: list[list[int]] = []
    took = 0.0
    while took < 0.15 and len(heap) < 8_000_000:
        heap.extend([i] for i in range(1_000_000))
        began = time.perf_counter()
        gc.collect()
        took = time.perf_counter() - began
    pauses = timed_loop_thread.watchdogs.gc_pauses
    try:
        wait_until(timed_loop_thread.probes_after(3), what="the watchdog to probe the loop")
        # A hold (at the latest this one; building the heap in this thread may have held the
        # loop already, from the GIL): from then on the collector is timed.
        timed_loop_thread.call(sleeper)
        wait_until(lambda: timed_loop_thread.pull() and any(
            s["frames"] and s["frames"][-1][0] == "sleeper" for s in timed_loop_thread.stalls),
            timeout=10, what="the sleep's stall")
        assert pauses._callback in gc.callbacks
        called = time.time()
        timed_loop_thread.call(gc.collect)

        def collected() -> list[dict[str, Any]]:
            timed_loop_thread.pull()
            return [s for s in timed_loop_thread.stalls if s["start"] >= called]

        wait_until(collected, timeout=10, what="the collector's stall")
    finally:
        del heap
    assert [s["held"] for s in collected()] == ["gc"], collected()
    assert collected()[0]["duration_ms"] >= 100


def test_the_collectors_passes_are_timed_until_the_watchdogs_stop() -> None:
    dogs = Watchdogs(WatchdogOptions(gil_interval=0))
    pauses = dogs.gc_pauses
    dogs.start()
    try:
        pauses.install()  # as a loop watchdog does at its first stall
        pauses.install()
        assert gc.callbacks.count(pauses._callback) == 1
        heap = [[i] for i in range(500_000)]
        began = time.perf_counter()
        gc.collect()
        ended = time.perf_counter()
        del heap
        assert pauses.covered(began, ended) > 0.002
        assert pauses.covered(ended + 1, ended + 2) == 0.0
    finally:
        dogs.stop()
    assert pauses._callback not in gc.callbacks  # detached: the interpreter as it was


def hasher() -> None:
    hashlib.pbkdf2_hmac("sha256", b"password", b"salt", 800_000)  # C code, the GIL released


def test_c_code_that_released_the_gil_is_seen_running_without_it(
        loop_thread: LoopThread) -> None:
    wait_until(loop_thread.probes_after(3), what="the watchdog to probe the loop")
    loop_thread.stalls.clear()
    loop_thread.call(hasher)
    wait_until(lambda: loop_thread.pull() and loop_thread.stalls, timeout=10, what="a stall")

    stall = max(loop_thread.stalls, key=lambda s: s["duration_ms"])
    activity = Counter(stall["activity"])
    # The watchdog woke and took the GIL at once while the loop thread ran: C code without it.
    running = activity["nogil"] + activity["cpu"]
    assert activity["nogil"] > running / 2, activity
    assert not activity["sleep"] and not activity["io"]


def test_a_computation_without_a_free_cpu_is_seen_waiting_for_one(
        loop_thread: LoopThread) -> None:
    # Two busy processes share the loop thread's one CPU: the kernel gives it about a third
    # of its time, and the looks say it was ready to run but queued, not computing or asleep.
    cpu = min(os.sched_getaffinity(0))
    hogs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    native = loop_thread.thread.native_id
    assert native is not None
    before = os.sched_getaffinity(native)
    try:
        for hog in hogs:
            os.sched_setaffinity(hog.pid, {cpu})
        os.sched_setaffinity(native, {cpu})
        wait_until(loop_thread.probes_after(3), what="the watchdog to probe the loop")
        loop_thread.stalls.clear()
        loop_thread.call(spinner)
        wait_until(lambda: loop_thread.pull() and loop_thread.stalls, timeout=20,
                   what="a stall")
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
        os.sched_setaffinity(native, before)
    stall = max(loop_thread.stalls, key=lambda s: s["duration_ms"])
    activity = stall["activity"]
    assert activity.get("queue", 0) > activity.get("cpu", 0)
    assert not activity.get("sleep") and not activity.get("io")


def test_the_kernel_says_what_a_thread_waits_on() -> None:
    import select
    import socket

    from apiscope.agent.schedstat import SyscallState

    lock = threading.Lock()
    lock.acquire()
    left, right = socket.socketpair()
    stop = threading.Event()
    # A select or poll on no file only waits out its timeout: Python before 3.11 sleeps so.
    targets = {"sleep": lambda: time.sleep(2), "lock": lambda: lock.acquire(timeout=2),
               "io": lambda: left.recv(1),
               "cpu": lambda: [None for _ in iter(lambda: stop.is_set(), True)],
               "sleep in select": lambda: select.select([], [], [], 2),
               "sleep in poll": lambda: select.poll().poll(2000),
               "io in select": lambda: select.select([left], [], [], 2)}
    threads = {kind: threading.Thread(target=fn, daemon=True) for kind, fn in targets.items()}
    for thread in threads.values():
        thread.start()
    try:
        for kind, thread in threads.items():
            state = SyscallState(thread.native_id or 0)
            expected = kind.split()[0]
            try:
                wait_until(lambda s=state, k=expected: s.read() == k,  # type: ignore[misc]
                           timeout=5, what=f"the {kind} thread to be seen {expected}")
            finally:
                state.close()
    finally:
        stop.set()
        lock.release()
        right.send(b"x")
        for thread in threads.values():
            thread.join(5)
        left.close()
        right.close()


def test_a_thread_waiting_for_the_gil_is_told_from_one_on_a_lock() -> None:
    from apiscope.agent.schedstat import SyscallState

    futex = gil_futex()
    assert futex is not None
    lock = threading.Lock()
    lock.acquire()
    stop = threading.Event()
    on_lock = threading.Thread(target=lambda: lock.acquire(timeout=5), daemon=True)
    spinners = [threading.Thread(target=python_loop, args=(stop,), daemon=True)
                for _ in range(2)]
    for thread in (on_lock, *spinners):
        thread.start()
    try:
        state = SyscallState(on_lock.native_id or 0)
        wait_until(lambda: state.read(futex) == "lock", what="the thread on a lock")
        state.close()
        # Two threads in pure Python take turns: each is found waiting for the GIL at times.
        states = [SyscallState(t.native_id or 0) for t in spinners]
        seen = set()
        for _ in range(400):
            seen.update(s.read(futex) for s in states)
            time.sleep(0.002)
        assert "gil" in seen and "lock" not in seen
        assert {s.read() for s in states} <= {"cpu", "lock"}  # without the address: a lock
        for s in states:
            s.close()
    finally:
        stop.set()
        lock.release()
        for thread in (on_lock, *spinners):
            thread.join(5)


def test_a_healthy_busy_loop_has_lag_but_no_stall(loop_thread: LoopThread) -> None:
    began: list[float] = []  # when each callback began

    async def short_callbacks() -> None:
        end = time.perf_counter() + 1.0
        while time.perf_counter() < end:
            began.append(time.perf_counter())
            time.sleep(0.002)  # 2 ms callbacks, back to back
            await asyncio.sleep(0)
        began.append(time.perf_counter())

    done = asyncio.run_coroutine_threadsafe(short_callbacks(), loop_thread.loop)
    done.result(timeout=20)
    loop_thread.pull()

    # A pass of the loop runs one callback: it ends before the next callback begins and began
    # after the one before it ended, so none lasted longer than the time from a callback's
    # beginning to the next but one's. That is 4-5 ms on a quiet machine; a busy one can hold
    # the loop thread off its CPU in a callback, and the watchdog rightly sees that pass.
    longest_ms = max(b - a for a, b in zip(began[:-2], began[2:], strict=True)) * 1000
    assert [s for s in loop_thread.stalls if s["duration_ms"] > longest_ms] == []
    if longest_ms < loop_thread.watchdogs.options.hold_threshold * 1000:
        assert loop_thread.stalls == []
    probes = sum(lag["probes"] for lag in loop_thread.lags)
    assert probes >= 0.7 / loop_thread.watchdogs.options.loop_interval
    busiest = max(loop_thread.lags, key=lambda lag: lag["max_ms"])
    assert 0 < busiest["max_ms"] < max(25, longest_ms)  # behind a callback, never long
    for lag in loop_thread.lags:
        assert 0 <= lag["p50_ms"] <= lag["p99_ms"] <= lag["max_ms"]


def test_an_idle_loop_is_checked_without_waking_it(loop_thread: LoopThread) -> None:
    wait_until(loop_thread.probes_after(10), what="ten checks of the idle loop")
    assert all(lag["max_ms"] == 0.0 for lag in loop_thread.lags[1:])
    assert loop_thread.stalls == []


def short_sleeper() -> None:
    time.sleep(0.03)  # a short stall's line


def test_every_short_stall_is_counted_at_its_length(loop_thread: LoopThread) -> None:
    # A 30 ms stall is longer than the threshold but shorter than the 100 ms between checks:
    # a probe lands in one only by chance. A selector loop's passes are timed in the loop, so
    # each one is a stall, and once one is seen the watchdog follows the next ones closely
    # enough to sample their stacks.
    wait_until(loop_thread.probes_after(3), what="the watchdog to check the loop")
    loop_thread.pull()
    loop_thread.stalls.clear()
    for _ in range(6):
        loop_thread.call(short_sleeper)
        time.sleep(0.3)
    loop_thread.pull()

    line = short_sleeper.__code__.co_firstlineno + 1
    at_line = [s for s in loop_thread.stalls
               if s["frames"] and s["frames"][-1][1:] == [__file__, line]]
    if loop_thread.watchdogs.options.time_passes:
        assert len(loop_thread.stalls) == 6
        assert all(29 <= s["duration_ms"] <= 60 for s in loop_thread.stalls)
        assert len(at_line) >= 5  # the first may end before the watchdog looks
        assert all(s["activity"].get("sleep", 0) >= 1 for s in at_line)
        # A stall followed only in its last 2 ms (the watchdog woke late on a loaded machine)
        # has no CPU reading rather than a guess: most have one, and every reading says asleep.
        measured = [s for s in at_line if s["cpu_ms"] is not None]
        assert len(measured) >= len(at_line) // 2
        assert all(s["cpu_ms"] < 10 for s in measured)
    else:  # probed: a stall is seen only when a probe lands in it (the alert helps)
        assert len(loop_thread.stalls) <= 6
        assert len(at_line) == len(loop_thread.stalls)


def spin(ms: float) -> None:
    end = time.thread_time() + ms / 1000  # CPU time, however busy the machine is
    while time.thread_time() < end:
        pass


async def short_hold() -> None:
    spin(16)  # a short hold's line


async def quick_step() -> None:
    spin(1.5)


def many_steps() -> None:
    for _ in range(12):  # twelve tasks whose first steps all run in the next pass
        asyncio.get_running_loop().create_task(quick_step())


def passes_of(loop_thread: LoopThread, work: Callable[[], object], times: int,
              seed: int) -> list[dict[str, Any]]:
    """The long passes recorded while `work` is put on the loop `times` times, at uneven gaps
    (as requests come: not in step with the watchdog's checks)."""
    wait_until(loop_thread.probes_after(3), what="the watchdog to check the loop")
    loop_thread.pull()
    loop_thread.stalls.clear()
    pace = random.Random(seed)
    for _ in range(times):
        loop_thread.call(work)
        time.sleep(pace.uniform(0.03, 0.07))
    loop_thread.pull()
    return loop_thread.stalls


def test_short_holds_by_one_task_are_seen_with_their_stack(
        timed_loop_thread: LoopThread) -> None:
    # 16 ms of CPU in a request's task: shorter than a stall, long enough to make every other
    # request wait. Each such pass is timed; those the watchdog looks at twice while they last
    # (or that began with that task's step alone) are known to be one task's, with its stack.
    loop = timed_loop_thread.loop
    passes = passes_of(timed_loop_thread, lambda: loop.create_task(short_hold()), 40, seed=1)

    assert len([s for s in passes if s["duration_ms"] >= 15]) >= 36
    held = [s for s in passes if s["held"] == "one"]
    assert len(held) >= 3
    line = short_hold.__code__.co_firstlineno + 1
    # In spin() called at that line (a weakref callback may be on top). The looks are taken
    # while the loop runs on: on a loaded machine one in a few dozen may land on the other
    # callback of a two-callback pass, so nearly all, not all.
    at_line = [s for s in held if ["short_hold", __file__, line] in s["frames"]
               and "spin" in [f[0] for f in s["frames"]]]
    assert len(at_line) >= 3 and len(at_line) >= 0.85 * len(held)
    assert not [s for s in passes if s["held"] == "many"]


def test_a_pass_of_many_quick_steps_is_held_by_no_one(timed_loop_thread: LoopThread) -> None:
    # Twelve tasks of 1.5 ms in one pass: an 18 ms pass, but no one code held the loop.
    often = timed_loop_thread.watchdogs.options.loop_interval <= 0.02
    many: list[dict[str, Any]] = []
    # Checked often, some passes are followed; which ones is up to when the checks fall, so
    # a batch may follow none: up to three batches are asked for one.
    for seed in (2, 3, 4) if often else (2,):
        passes = passes_of(timed_loop_thread, many_steps, 30, seed=seed)

        assert len(passes) >= 25
        # A step the host held off its CPU (a busy machine: the pass took milliseconds more
        # than the CPU it used) did hold the loop that long, and two looks may see it; a pass
        # that ran all along was many steps.
        ones = [s for s in passes if s["held"] == "one"]
        assert not [s for s in ones
                    if s["cpu_ms"] is None or s["cpu_ms"] > s["duration_ms"] - 5], ones
        many += [s for s in passes if s["held"] == "many"]
        assert all(s["frames"] == [] for s in many)
        if many:
            break
    if often:
        assert many


def test_a_saturated_loop_is_followed_once_per_check_not_at_every_pass() -> None:
    # Every pass crowded (a server at full load: many requests' callbacks in each), back to
    # back for two seconds. Each pass is recorded at its length; the watchdog looks at one per
    # check (every 100 ms) at most, not at all of them, and a crowded pass alerts no one.
    loop_thread = LoopThread(WatchdogOptions())
    loop_thread.start()
    try:
        wait_until(loop_thread.probes_after(3), what="the watchdog to check the loop")
        loop_thread.pull()
        loop_thread.stalls.clear()
        seconds = 2.0
        until = time.monotonic() + seconds

        def crowd() -> None:
            if time.monotonic() < until:
                many_steps()
                asyncio.get_running_loop().call_soon(crowd)  # in the next pass, with them

        loop_thread.call(crowd)
        time.sleep(seconds + 0.3)
        loop_thread.pull()
        interval = loop_thread.watchdogs.options.loop_interval
    finally:
        loop_thread.close()
    passes = sorted(loop_thread.stalls, key=lambda s: s["start"])
    followed = [s for s in passes if s["held"] is not None]
    assert len(passes) >= 40, len(passes)
    # None may be followed at all on a host busy enough that the loop thread waits for a CPU
    # for half of each pass (the host made them long, not the code). A crowded pass that a
    # busy host stretched past the stall threshold, and of which only one look was evidence
    # (the loop thread waited for the GIL or a CPU at the others), may be a hold: from its
    # end the watchdog checks at its alerted period. Until then, one per loop interval.
    options = loop_thread.watchdogs.options
    alerting = [i for i, s in enumerate(followed) if s["held"] == "one" or (
        s["held"] == "glimpse" and s["duration_ms"] >= options.stall_threshold * 1000)]
    calm = followed[:alerting[0] + 1] if alerting else followed
    calm_seconds = calm[-1]["start"] - passes[0]["start"] if calm else 0.0
    assert len(calm) <= calm_seconds / interval + 3, [
        (round(s["start"] - passes[0]["start"], 3), s["held"], s["duration_ms"]) for s in calm]
    alerted_period = min(interval, options.stall_threshold * CATCH_SHARE)
    assert len(followed) <= len(calm) + (seconds - calm_seconds) / alerted_period + 3
    assert not [s for s in followed if s["held"] == "one" and s["frames"]
                and s["cpu_ms"] is not None and s["cpu_ms"] > s["duration_ms"] - 5]


@pytest.mark.parametrize("budget", ["ample", "spent", "none given"])
def test_following_passes_stays_within_its_cpu_budget(
        budget: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Holds back to back (a 30 ms sleep in each pass) for a second: with the CPU allowance
    # the watchdog follows them and names the line; with none left (as on a host so busy that
    # every pass looks long) it follows none, and still records every hold at its length.
    import apiscope.agent.loopwatch as loopwatch

    if budget == "spent":
        monkeypatch.setattr(loopwatch, "FOLLOW_CPU_SHARE", 0.0)
        monkeypatch.setattr(loopwatch, "FOLLOW_CPU_BURST", 0.0)
    else:  # a second of CPU saved up: however slow the host's looks, none is refused
        monkeypatch.setattr(loopwatch, "FOLLOW_CPU_BURST", 1.0)
    loop_thread = LoopThread(FAST)
    loop_thread.start()
    try:
        wait_until(loop_thread.probes_after(3), what="the watchdog to check the loop")
        if budget == "none given":  # by the collector, its budget over (`WatchShare`)
            loop_thread.watchdogs.set_follow_share(0.0)
        loop_thread.pull()
        loop_thread.stalls.clear()
        until = time.monotonic() + 1.0

        def hold() -> None:
            if time.monotonic() < until:
                time.sleep(0.03)  # the hold's line
                asyncio.get_running_loop().call_later(0.005, hold)

        loop_thread.call(hold)
        time.sleep(1.3)
        loop_thread.pull()
        [dog] = loop_thread.watchdogs._loops.values()
    finally:
        loop_thread.close()
    holds = [s for s in loop_thread.stalls if s["duration_ms"] >= 28]
    located = [s for s in holds if s["frames"] and s["frames"][-1][0].endswith("hold")]
    assert len(holds) >= 15, len(holds)
    if budget == "ample":
        assert len(located) >= len(holds) // 2 and dog.unfollowed == 0, (len(located), len(holds))
    elif budget == "none given":  # what it had saved up goes too: nothing to follow with
        assert located == [] and dog.unfollowed == 1, (len(located), dog.unfollowed)
        # Given a share again, it follows again: the next follow is due at once.
        dog.set_follow_share(0.005)
        assert dog._next_follow == 0.0 and dog._follow_cpu.refilled() >= 0.0
    else:
        # And it stops waking for them: one check found the allowance spent, and the next
        # is due when it is back above zero (never, here), where it used to wake for each.
        assert located == [] and dog.unfollowed == 1, (len(located), dog.unfollowed)


def _wakeups(native_id: int) -> int:
    with open(f"/proc/self/task/{native_id}/status") as status:
        for line in status:
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split()[1])
    raise AssertionError("no voluntary_ctxt_switches in the thread's status")


def _alerted_wakeups(share: float, options: WatchdogOptions | None = None,
                     ) -> tuple[float, float]:
    """(wake-ups a second of the loop watchdog, its allowance's balance after) over a second
    of passes of 1 ms back to back, alerted all along, at this following share."""
    loop_thread = LoopThread(options or WatchdogOptions())
    loop_thread.start()
    try:
        wait_until(loop_thread.probes_after(2), what="the watchdog to check the loop")
        [dog] = loop_thread.watchdogs._loops.values()
        [thread] = [t for t in threading.enumerate() if t.name == "apiscope-loop-watchdog"]
        assert thread.native_id is not None
        dog.set_follow_share(share)
        until = time.monotonic() + 1.5

        def short_pass() -> None:
            if time.monotonic() < until:
                time.sleep(0.001)  # each pass shorter than one worth following
                asyncio.get_running_loop().call_soon(short_pass)

        dog._alert_until = time.perf_counter() + 60  # as after a hold: checks at each pass
        loop_thread.call(short_pass)
        time.sleep(0.5)  # the saved-up allowance spent, at a small share
        before = _wakeups(thread.native_id)
        time.sleep(1.0)
        woke = _wakeups(thread.native_id) - before
        return woke / 1.0, dog._follow_cpu.balance
    finally:
        loop_thread.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_checking_closely_while_alerted_is_paid_from_the_following_allowance() -> None:
    # Alerted, the watchdog wakes as each pass becomes old enough to follow: a loop of short
    # passes back to back (a busy host's) had it wake a thousand times a second, 16 ms of CPU,
    # whatever its share. Paid from the allowance, a small share brings it back to the checks
    # at the loop interval once what was saved up is spent.
    ample, _ = _alerted_wakeups(0.05)
    small, balance = _alerted_wakeups(0.0002)
    assert ample >= 60, ample  # the close checks, in the act
    assert small <= ample / 3, (small, ample)
    assert balance < 0.0005, balance  # paid for: nothing left over


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_probed_loop_is_checked_closely_only_while_the_allowance_lasts() -> None:
    # uvloop has no Python selector: its loop is probed, and after a late probe checked at the
    # stall threshold. A server whose loop was held now and then stayed alerted all along, and
    # its watchdog checked 40 times a second (11-15 ms of CPU a second) while the budget had
    # cut its share to a sixteenth: the close checks were neither paid for nor given up.
    ample, _ = _alerted_wakeups(0.05, PROBED)
    small, balance = _alerted_wakeups(0.0002, PROBED)
    assert ample >= 60, ample  # the close checks, in the act
    assert small <= ample / 2.5, (small, ample)
    assert balance < 0.0005, balance  # paid for: nothing left over


def test_who_held_a_pass_is_told_from_the_looks_that_saw_it() -> None:
    # The decision itself, on looks as the watchdog takes them: (task, stack, the scope of
    # the request the task serves); plain objects stand for the tasks.
    from apiscope.agent.loopwatch import _between_passes, _held

    one, two, seven = object(), object(), object()
    hold = (("short_hold", "/srv/app.py", 15), ("spin", "/srv/app.py", 9))
    other = (("Handle._run", "/usr/lib/python3.11/asyncio/events.py", 80),)
    served = {"type": "http", "path": "/slow"}
    # One task at the last two looks: its hold, whatever the callbacks, and its request.
    assert _held([(seven, other, None), (one, hold, served), (one, hold, served)], 12) == (
        "one", Counter({hold: 2}), served)
    # A pass that began with two callbacks: the one seen most held it, even when the other
    # ran after it and was seen last.
    assert _held([(one, hold, None), (one, hold, None), (two, other, served)], 2) == (
        "one", Counter({hold: 2}), None)
    # Looks with no task stepping (the step's clean-up once it ended) do not outvote it.
    assert _held([(one, hold, None), (None, other, None), (None, other, None)], 1)[:2] == (
        "one", Counter({hold: 1}))
    assert _held([(None, other, None), (None, other, None)], 1)[:2] == (
        "one", Counter({other: 2}))
    # Different tasks, many callbacks: no one code to blame; one look: a glimpse.
    assert _held([(one, hold, served), (two, other, None)], 12) == ("many", Counter(), None)
    assert _held([(one, hold, None)], 12)[0] == "glimpse"
    base = "/usr/lib/python3.11/asyncio/base_events.py"
    assert _between_passes((("BaseEventLoop.run_forever", base, 606),))
    assert _between_passes((("BaseEventLoop._run_once", base, 1880),
                            ("EpollSelector.select", "/usr/lib/python3.11/selectors.py", 468)))
    assert not _between_passes((("BaseEventLoop._run_once", base, 1922), *hold))


def test_two_tasks_one_after_the_other_are_two_though_the_second_reuses_the_firsts_memory(
        ) -> None:
    # A finished task's memory goes to the next task created, so a crowd of requests' tasks
    # share a few addresses (ids): looks that kept only ids took two of them for one task
    # held all along. The looks keep the tasks themselves.
    from apiscope.agent.loopwatch import _current_task, _held

    hold = (("quick_step", "/srv/app.py", 5),)
    looks: list[Any] = []

    async def step() -> None:
        task = _current_task(asyncio.get_running_loop())
        assert task is not None
        looks.append((task, hold, None))

    async def crowd() -> None:
        for _ in range(2):
            await asyncio.get_running_loop().create_task(step())

    asyncio.run(crowd())
    first, second = (task for task, _, _ in looks)
    assert first is not second and first.done() and second.done()
    assert _held(looks, 12)[0] == "many"
    # The looks hold the finished tasks alive (so no later one can take their ids) until
    # they are dropped with the pass judged.
    gone = weakref.ref(first)
    del first, second
    gc.collect()
    assert gone() is not None
    looks.clear()
    gc.collect()
    assert gone() is None


def test_the_selector_is_given_back_when_the_watchdogs_stop() -> None:
    lt = LoopThread(WatchdogOptions())
    lt.start()
    selector = lt.loop._selector  # type: ignore[attr-defined]
    try:
        wait_until(lambda: "select" in vars(selector), what="the selector to be timed")
        lt.call(short_sleeper)
        wait_until(lambda: lt.pull() and lt.stalls, what="a stall")
    finally:
        lt.watchdogs.stop()
    assert "select" not in vars(selector)  # the class's own method again
    done = asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01, "served"), lt.loop)
    assert done.result(timeout=5) == "served"
    lt.close()


def test_a_failing_pass_timer_never_stops_the_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken() -> int:
        raise OSError("no thread clock")

    monkeypatch.setattr(time, "thread_time_ns", broken)  # read when a long pass ends
    loop = asyncio.new_event_loop()
    try:
        clock = PassClock.install(loop, 0.001)
        assert clock is not None

        async def long_pass() -> str:
            time.sleep(0.01)  # a pass over the threshold: its end asks for the thread's CPU
            await asyncio.sleep(0)
            return "served"

        assert loop.run_until_complete(long_pass()) == "served"
        assert clock.errors >= 1 and not clock.long
        clock.uninstall()
    finally:
        loop.close()


def test_a_closed_loop_ends_its_watchdog() -> None:
    options = WatchdogOptions(loop_interval=0.02, gil_interval=0.05)
    watchdogs = Watchdogs(options)
    watchdogs.start()

    async def request() -> None:
        watchdogs.see_loop()
        watchdogs.see_loop()  # once per loop
        await asyncio.sleep(0.1)

    try:
        asyncio.run(request())
        wait_until(lambda: [t.name for t in watchdog_threads()] == ["apiscope-gil-watchdog"],
                   what="the loop watchdog to end with its loop")
        assert watchdogs.pull()["errors"] == 0
    finally:
        watchdogs.stop()
    assert watchdog_threads() == []


# -- the GIL ------------------------------------------------------------------------------


def gil_wait_while(work: Callable[[threading.Event], None], threads: int = 2,
                   seconds: float = 1.5) -> dict[str, Any]:
    """What a GIL watchdog (10 ms wake-ups) measures while `threads` threads run `work`."""
    stop = threading.Event()
    workers = [threading.Thread(target=work, args=(stop,), daemon=True) for _ in range(threads)]
    for w in workers:
        w.start()
    meter = GilMeter()
    dog = GilWatchdog(meter, 0.01)
    try:
        time.sleep(0.1)  # the workers are at it
        meter.drain()
        dog.start()
        time.sleep(seconds)
        summary = meter.drain()
    finally:
        dog.stop()
        stop.set()
        for w in workers:
            w.join(10)
    assert summary is not None and summary["runqueue_known"]
    assert summary["acquisitions"] >= 10
    return summary


def mean_wait_ms(summary: dict[str, Any]) -> float:
    return float(summary["wait_seconds"]) / summary["acquisitions"] * 1000.0


def python_loop(stop: threading.Event) -> None:
    n = 0
    while not stop.is_set():
        for i in range(1000):
            n += i


def sleeping(stop: threading.Event) -> None:
    while not stop.is_set():
        time.sleep(0.05)


def hashing(stop: threading.Event) -> None:
    while not stop.is_set():  # OpenSSL's PBKDF2 runs with the GIL released
        hashlib.pbkdf2_hmac("sha256", b"x" * 4096, b"salt", 20_000)


def socket_wait(stop: threading.Event) -> None:
    a, b = socket.socketpair()
    with a, b:
        a.settimeout(0.2)
        while not stop.is_set():
            try:
                a.recv(1)
            except TimeoutError:
                pass


def test_the_gils_futex_is_learnt_and_reported_with_each_pull() -> None:
    futex = gil_futex()
    assert futex is not None, "a thread made to wait for the GIL was not seen waiting"
    number, address = futex
    assert number >= 0 and address > 0
    # Learnt again: the same system call, on the same word or its neighbour (the condition
    # variable waits alternate between two words of the GIL's state).
    again = gil_futex()
    assert again is not None and again[0] == number and abs(again[1] - address) <= GIL_SPAN
    assert not [t for t in threading.enumerate() if t.name == "apiscope-gil-calibration"]

    watchdogs = Watchdogs(WatchdogOptions(gil_interval=0.05))
    watchdogs.start()
    try:
        wait_until(lambda: watchdogs.pull()["gil_futex"] is not None, what="the futex pulled")
        reported = watchdogs.pull()["gil_futex"]
        assert reported[0] == number and abs(reported[1] - address) <= GIL_SPAN
    finally:
        watchdogs.stop()


def test_where_the_gils_holder_is_read_comes_with_the_pulls() -> None:
    # The GIL state's address and the ident's offset in a thread state, read back here as the
    # collector reads them from outside: held by this thread, which runs Python now.
    import ctypes

    from apiscope.collectors.agent_client import watchdogs_from_json

    watchdogs = Watchdogs(WatchdogOptions(gil_interval=0.05))
    watchdogs.start()
    try:
        wait_until(lambda: watchdogs.pull()["gil_holder"] is not None, what="the holder pulled")
        pulled = watchdogs.pull()
    finally:
        watchdogs.stop()
    base, offset = pulled["gil_holder"]
    futex = gil_futex()
    assert futex is not None and 0 < futex[1] - base < 200
    interval, last, locked = (ctypes.c_ulong.from_address(base).value,
                              ctypes.c_void_p.from_address(base + 8).value,
                              ctypes.c_int.from_address(base + 16).value)
    assert interval == round(sys.getswitchinterval() * 1e6) and locked == 1
    assert ctypes.c_ulong.from_address(last + offset).value == threading.get_ident()
    report = watchdogs_from_json(pulled, 1, 0.0)
    assert report.gil_holder == (base, offset)
    assert report.idents is not None and \
        report.idents[threading.get_ident()] == threading.get_native_id()


def test_the_lines_threads_sleep_at_come_with_the_pulls() -> None:
    # No loop is watched here: the GIL watchdog wakes every 50 ms, and looks once a second.
    stop = threading.Event()

    def napper() -> None:
        while not stop.is_set():
            time.sleep(0.01)  # NAP

    thread = threading.Thread(target=napper, daemon=True)
    thread.start()
    watchdogs = Watchdogs(WatchdogOptions(gil_interval=0.05))
    watchdogs.start()
    line = napper.__code__.co_firstlineno + 2
    asleep = 0
    try:
        deadline = time.monotonic() + 30
        while asleep < 3 and time.monotonic() < deadline:
            time.sleep(0.3)
            asleep += sum(row[2] for row in watchdogs.pull()["sleeps"]
                          if row[0] == __file__ and row[1] == line)
    finally:
        watchdogs.stop()
        stop.set()
        thread.join(10)
    assert asleep >= 3


def test_the_gils_futex_is_kept_only_when_two_attempts_agree(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # The race that catches the helper on another word (the lock behind the event, for a moment
    # after it wakes) cannot be made to happen on demand: the attempts' results are given here.
    from apiscope.agent import gilwatch

    def attempts(results: list[tuple[int, int] | None]) -> list[int]:
        queue = list(results)
        calls = []

        def calibrate(hold: Callable[[], object], read: Callable[[int], bytes],
                      ) -> tuple[int, int] | None:
            calls.append(1)
            return queue.pop(0) if queue else None
        monkeypatch.setattr(gilwatch, "_calibrate", calibrate)
        return calls

    # Words in no file's mapping here (anonymous memory, as a lock allocated by a thread).
    monkeypatch.setattr(gilwatch, "_in_mapped_file", lambda address: False)
    gil, lock = (202, 0x7F00_0000_06F0), (202, 0x5600_0000_1000)
    calls = attempts([lock, gil, (202, gil[1] + 4)])
    assert gil_futex() == (202, gil[1] + 4) and len(calls) == 3
    calls = attempts([gil, None, (202, gil[1] + 88)])
    assert gil_futex() == (202, gil[1] + 88) and len(calls) == 3
    # Never two alike: nothing learnt, rather than a word that may be a lock's.
    attempts([lock, gil, None, (202, 0x5600_0000_9000), None, None])
    assert gil_futex() is None
    attempts([gil, (230, gil[1])])  # another system call on the same word is not the same
    assert gil_futex() is None
    # A word in the interpreter's own data (a file's mapping) is the GIL's at the first try.
    monkeypatch.setattr(gilwatch, "_in_mapped_file", lambda address: address == gil[1])
    calls = attempts([lock, gil])
    assert gil_futex() == gil and len(calls) == 2


def test_the_learnt_futex_lies_in_the_interpreters_own_data() -> None:
    from apiscope.agent.gilwatch import _in_mapped_file

    futex = gil_futex()
    assert futex is not None and _in_mapped_file(futex[1])
    lock_in_heap = threading.Lock()
    assert not _in_mapped_file(id(lock_in_heap))  # an object allocated at run time
    assert not _in_mapped_file(0)


def test_pure_python_threads_make_a_waker_wait_for_the_gil() -> None:
    summary = gil_wait_while(python_loop)
    # Each wake-up waits for a switch interval (5 ms) or so: far above the idle baseline.
    assert mean_wait_ms(summary) > 2.0
    assert summary["max_wait_ms"] > 4.0
    assert summary["wait_seconds"] > 0.1 * summary["seconds"]


@pytest.mark.parametrize("work", [sleeping, hashing, socket_wait],
                         ids=["time.sleep", "pbkdf2_hmac", "socket"])
def test_threads_that_release_the_gil_cause_no_wait(work: Callable[[threading.Event], None],
                                                     ) -> None:
    summary = gil_wait_while(work)
    # Timer slack alone makes a wake-up a few tenths of a millisecond late on a VM; a pure
    # Python thread makes it wait about a switch interval (5 ms).
    assert mean_wait_ms(summary) < 1.5
    assert summary["wait_seconds"] < 0.1 * summary["seconds"]


# -- small parts ----------------------------------------------------------------------------


def test_schedstat_reads_this_threads_cpu_time_again_and_again() -> None:
    stat = SchedStat.open(threading.get_native_id())
    if stat is None:
        pytest.skip("no schedstat on this system")
    try:
        first = stat.read()
        spinner()
        second = stat.read()
        assert first is not None and second is not None
        assert second[0] - first[0] >= 190_000_000  # 200 ms of CPU, in ns
    finally:
        stat.close()
    assert stat.read() is None


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0
    assert percentile([3.0], 0.99) == 3.0


def test_options_from_the_environment() -> None:
    options = WatchdogOptions.from_env({"APISCOPE_WATCHDOG_LOOP_INTERVAL_MS": "20",
                                        "APISCOPE_WATCHDOG_STALL_THRESHOLD_MS": "bad",
                                        "APISCOPE_WATCHDOG_GIL_INTERVAL_MS": "0"})
    assert options.loop_interval == 0.02 and options.stall_threshold == 0.025
    assert options.gil_interval == 0 and options.enabled
    assert not WatchdogOptions.from_env({"APISCOPE_WATCHDOG": "0"}).enabled


def test_outside_an_asyncio_loop_see_loop_does_nothing() -> None:
    watchdogs = Watchdogs(WatchdogOptions())
    watchdogs.start()
    try:
        watchdogs.see_loop()  # sync code (or trio): nothing to watch, nothing raised
        assert [t.name for t in watchdog_threads()] == ["apiscope-gil-watchdog"]
    finally:
        watchdogs.stop()
    assert watchdog_threads() == []


def test_disabled_watchdogs_start_no_thread() -> None:
    watchdogs = Watchdogs(WatchdogOptions(enabled=False))
    watchdogs.start()
    assert watchdog_threads() == []
    assert watchdogs.pull()["gil"] is None


# -- from the pull to the session file -------------------------------------------------------

PULL = {"pid": 42, "ts": 1000.0, "requests": [], "stats": {}, "watchdogs": {
    "loops": [{"tid": 7, "probes": 20, "p50_ms": 0.1, "p99_ms": 30.0, "max_ms": 201.0}],
    "stalls": [{"tid": 7, "start": 999.5, "duration_ms": 201.0, "cpu_ms": 0.4, "held": "one",
                "frames": [["main", "/app/main.py", 3], ["handler", "/app/main.py", 9]],
                "route": "GET /items/{item_id}"}],
    "gil": {"seconds": 0.5, "wait_seconds": 0.01, "acquisitions": 10, "max_wait_ms": 4.5,
            "runqueue_known": True},
    "gil_futex": [202, 140000000000000], "cpu_seconds": 0.002, "errors": 0,
    "sleeps": [["/app/main.py", 9, 12, 0, 1], ["/app/main.py", 30, 0, 4],
               ["bad row"], ["/app/main.py", "x", 1, 1], ["/app/main.py", 5, 1, 1, 1, 1]]}}


def test_pull_to_model_to_session_and_back(tmp_path: Path) -> None:
    report = batch_from_json(PULL).watchdogs
    assert report is not None
    stall = LoopStall(42, 7, 999.5, 201.0, (Frame("main", "/app/main.py", 3),
                                             Frame("handler", "/app/main.py", 9)), 0.4,
                      held="one", route="GET /items/{item_id}")
    lag = LoopLagSample(1000.0, 42, 20, 0.1, 30.0, 201.0)
    gil = GilSample(1000.0, 42, 0.5, 0.01, 10, 4.5, True)
    assert (report.stalls, report.lag, report.gil) == ([stall], [lag], gil)
    assert report.gil_futex == (202, 140000000000000)
    # malformed rows skipped; a row without the GIL's count (an older agent) has none
    assert report.sleeps == (LineLooks("/app/main.py", 9, 12, 0, 1),
                             LineLooks("/app/main.py", 30, 0, 4, 0))
    assert batch_from_json({"pid": 1}).watchdogs is None  # an agent without watchdogs
    malformed = {**PULL, "watchdogs": {**PULL["watchdogs"], "gil_futex": ["x"]}}  # type: ignore[dict-item]
    assert batch_from_json(malformed).watchdogs.gil_futex is None  # type: ignore[union-attr]

    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_loop_stalls(report.stalls)
        writer.put_loop_lag(report.lag)
        writer.put_gil([gil])
        writer.flush()
    with SessionReader(path) as reader:
        assert reader.loop_stalls() == [stall]
        assert reader.loop_lag() == [lag]
        assert reader.gil_samples() == [gil]


def test_who_held_the_loop_is_kept_and_an_older_session_reads_without_it(
        tmp_path: Path) -> None:
    frames = (Frame("handler", "/app/main.py", 9),)
    stalls = [LoopStall(42, 7, 999.5 + i, 16.0, frames if held != "many" else (), 15.0,
                        {"cpu": 2}, held, "GET /report" if held == "one" else None)
              for i, held in enumerate(["one", "many", "glimpse", None])]
    path = tmp_path / "s.sqlite"
    with SessionWriter(path) as writer:
        writer.put_loop_stalls(stalls)
        writer.flush()
    with SessionReader(path) as reader:
        assert reader.loop_stalls() == stalls
    conn = sqlite3.connect(path)
    conn.execute("ALTER TABLE loop_stalls DROP COLUMN route")  # as written before v10
    conn.commit()
    with SessionReader(path) as reader:
        assert [s.route for s in reader.loop_stalls()] == [None] * 4
        assert [s.held for s in reader.loop_stalls()] == ["one", "many", "glimpse", None]
    conn.execute("ALTER TABLE loop_stalls DROP COLUMN held")  # as written before v4
    conn.commit()
    conn.close()
    with SessionReader(path) as reader:
        assert [s.held for s in reader.loop_stalls()] == [None] * 4
        assert [s.frames for s in reader.loop_stalls()] == [s.frames for s in stalls]


def test_a_session_without_watchdog_tables_reads_as_empty(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    SessionWriter(path).close()
    conn = sqlite3.connect(path)
    for table in ("loop_stalls", "loop_lag", "gil_wait"):
        conn.execute(f"DROP TABLE {table}")  # as in a file written before they existed
    conn.commit()
    conn.close()
    with SessionReader(path) as reader:
        assert reader.loop_stalls() == [] and reader.loop_lag() == []
        assert reader.gil_samples() == []


def test_a_look_names_each_frame_at_the_line_it_is_at_now() -> None:
    # Looks name each (code, instruction offset) once and reuse the name: two places in one
    # function keep their own lines, and a name reused is the same as the first.
    from apiscope.agent.loopwatch import frame_stack

    def two_places() -> tuple[tuple[str, str, int], tuple[str, str, int]]:
        first = frame_stack(sys._getframe())[-1]
        second = frame_stack(sys._getframe())[-1]
        return first, second

    first, second = two_places()
    line = two_places.__code__.co_firstlineno
    assert first[0].endswith("two_places") and first[1:] == (__file__, line + 1)
    assert second[2] == line + 2
    assert two_places() == (first, second)
