"""Thread roles and sample states, on real py-spy output and on hand-built stacks."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from apiscope.collectors.gilprobe import activity_index, parse_dump_json
from apiscope.collectors.pyspy import parse_raw
from apiscope.collectors.threads import Activity, classify, stack_role, thread_roles
from apiscope.model import Frame, SampleState, StackSample, ThreadRole

FIXTURES = Path(__file__).parent / "fixtures"
APP = "/srv/api/app.py"
LIB = "/usr/lib/python3.11"
SITE = "/srv/api/.venv/lib/python3.11/site-packages"


def load(name: str, pid: int = 0) -> tuple[StackSample, ...]:
    return parse_raw((FIXTURES / name).read_text(), default_pid=pid).samples


def state_counts(samples: tuple[StackSample, ...]) -> Counter[tuple[int, SampleState]]:
    counts: Counter[tuple[int, SampleState]] = Counter()
    for s in samples:
        counts[(s.tid, s.state)] += s.count
    return counts


def test_uvicorn_main_thread_is_the_loop_and_anyio_threads_are_workers() -> None:
    roles = thread_roles(load("uvicorn_sync_threadpool.txt", pid=9562))
    assert roles == {(9562, 9562): ThreadRole.LOOP, (9562, 9575): ThreadRole.WORKER,
                     (9562, 9576): ThreadRole.WORKER}


def test_gunicorn_roles_per_process() -> None:
    roles = thread_roles(load("gunicorn_subprocesses.txt"))
    assert roles == {
        (9593, 9593): ThreadRole.OTHER,  # the arbiter, waiting for signals
        # gunicorn's master runs a small asyncio loop of its own in a thread.
        (9593, 9601): ThreadRole.LOOP,
        (9599, 9599): ThreadRole.LOOP, (9599, 9608): ThreadRole.WORKER,
        (9599, 9633): ThreadRole.WORKER,
        (9600, 9600): ThreadRole.LOOP, (9600, 9607): ThreadRole.WORKER,
        (9600, 9616): ThreadRole.WORKER,
    }


def test_selector_wait_and_idle_workers_are_waiting() -> None:
    samples, _ = classify(load("uvicorn_sync_threadpool.txt", pid=9562))
    counts = state_counts(samples)
    # The loop: 148 samples in EpollSelector.select under _run_once, nothing else waits.
    assert counts[(9562, SampleState.WAITING)] == 148
    assert counts[(9562, SampleState.RUNNING)] == 199 - 148
    # Workers: idle in Queue.get -> Condition.wait, or running sync_handler (never waiting).
    assert counts[(9575, SampleState.WAITING)] == 40
    assert counts[(9575, SampleState.RUNNING)] == 199 - 40
    handler = [s for s in samples if s.frames[-1].function == "sync_handler"]
    assert handler and all(s.state is SampleState.RUNNING for s in handler)


def test_sleep_in_async_handler_is_not_waiting_on_the_loop_thread() -> None:
    samples, roles = classify(load("uvicorn_async_sleep.txt", pid=9507))
    assert roles == {(9507, 9507): ThreadRole.LOOP}
    render = [s for s in samples if s.frames[-1] == Frame("render", APP, 9)]
    assert sum(s.count for s in render) == 188
    # Without an activity probe the raw format cannot tell sleeping from computing.
    assert all(s.state is SampleState.RUNNING and s.gil is None for s in render)


def test_probe_snapshots_turn_a_sleeping_handler_into_blocked() -> None:
    snaps = parse_dump_json((FIXTURES / "dump_async_sleep.json").read_text(), ts=1.0)
    assert [(s.pid, s.tid, s.active, s.owns_gil, s.leaf) for s in snaps] == [
        (9507, 9507, False, False, Frame("render", APP, 9))]
    samples, _ = classify(load("uvicorn_async_sleep.txt", pid=9507), activity_index(snaps))
    counts: Counter[tuple[SampleState, bool | None]] = Counter()
    for s in samples:
        counts[(s.state, s.gil)] += s.count
    assert counts[(SampleState.BLOCKED, False)] == 188
    assert counts[(SampleState.WAITING, None)] == 2  # EpollSelector.select
    assert sum(counts.values()) == 199


def test_probe_fixture_of_the_thread_pool() -> None:
    snaps = parse_dump_json((FIXTURES / "dump_sync_threadpool.json").read_text(), ts=1.0)
    by_tid = {s.tid: s for s in snaps}
    assert set(by_tid) == {9562, 9575, 9576}
    assert by_tid[9575].leaf == Frame("sync_handler", APP, 43)
    assert by_tid[9562].leaf == Frame("EpollSelector.select", f"{LIB}/selectors.py", 468)


def test_majority_of_probe_observations_decides() -> None:
    leaf = Frame("compute", APP, 20)
    sample = StackSample(1, 1, "MainThread", (
        Frame("BaseEventLoop._run_once", f"{LIB}/asyncio/base_events.py", 1922), leaf), 10)
    running, _ = classify([sample], {(1, 1, leaf): Activity(4, 3, 3)})
    blocked, _ = classify([sample], {(1, 1, leaf): Activity(4, 1, 0)})
    assert (running[0].state, running[0].gil) == (SampleState.RUNNING, True)
    assert (blocked[0].state, blocked[0].gil) == (SampleState.BLOCKED, False)


def test_concurrent_futures_worker_waiting_in_c_queue_get() -> None:
    base = (Frame("Thread._bootstrap_inner", f"{LIB}/threading.py", 1045),
            Frame("Thread.run", f"{LIB}/threading.py", 982))
    idle = StackSample(1, 2, "asyncio_0", base + (
        Frame("_worker", f"{LIB}/concurrent/futures/thread.py", 81),), 5)
    busy = StackSample(1, 2, "asyncio_0", base + (
        Frame("_worker", f"{LIB}/concurrent/futures/thread.py", 83),
        Frame("_WorkItem.run", f"{LIB}/concurrent/futures/thread.py", 58),
        Frame("read_file", APP, 12)), 3)
    samples, roles = classify([idle, busy])
    assert roles == {(1, 2): ThreadRole.WORKER}
    assert [s.state for s in samples] == [SampleState.WAITING, SampleState.RUNNING]


def test_aiosqlite_connection_thread_is_other_and_waits_on_its_queue() -> None:
    frames = (Frame("Thread._bootstrap_inner", f"{LIB}/threading.py", 1045),
              Frame("Thread.run", f"{LIB}/threading.py", 982),
              Frame("_connection_worker_thread", f"{SITE}/aiosqlite/core.py", 59),
              Frame("Queue.get", f"{LIB}/queue.py", 180),
              Frame("Condition.wait", f"{LIB}/threading.py", 331))
    working = frames[:3] + (Frame("Cursor.execute", f"{SITE}/aiosqlite/cursor.py", 48),)
    samples, roles = classify([StackSample(1, 3, "Thread-2", frames, 90),
                               StackSample(1, 3, "Thread-2", working, 2)])
    assert roles == {(1, 3): ThreadRole.OTHER}
    assert [s.state for s in samples] == [SampleState.WAITING, SampleState.RUNNING]


def test_uvloop_fixture_loop_is_found_and_waits_below_runner_run() -> None:
    samples, roles = classify(load("uvicorn_uvloop.txt", pid=5025))
    assert roles == {(5025, 5025): ThreadRole.LOOP, (5025, 5149): ThreadRole.WORKER,
                     (5025, 5150): ThreadRole.WORKER}
    loop = [s for s in samples if s.tid == 5025]
    assert sum(s.count for s in loop) == 199
    idle = [s for s in loop if s.frames[-1] == Frame("Runner.run", f"{LIB}/asyncio/runners.py",
                                                      118)]
    assert sum(s.count for s in idle) == 40
    assert all(s.state is SampleState.WAITING for s in idle)
    handler = [s for s in loop if s.frames[-1] == Frame("render", APP, 9)]
    assert sum(s.count for s in handler) == 102
    assert all(s.state is SampleState.RUNNING for s in handler)


def test_uvloop_loop_thread_waits_in_c_below_runner_run() -> None:
    root = (Frame("Server.run", f"{SITE}/uvicorn/server.py", 86),
            Frame("asyncio_run", f"{SITE}/uvicorn/_compat.py", 30),
            Frame("Runner.run", f"{LIB}/asyncio/runners.py", 118))
    idle = StackSample(1, 1, "MainThread", root, 50)
    handling = StackSample(1, 1, "MainThread", root + (
        Frame("RequestResponseCycle.run_asgi", f"{SITE}/uvicorn/protocols/http/h11_impl.py",
              411), Frame("hello", APP, 15)), 4)
    samples, roles = classify([handling, idle])
    assert roles == {(1, 1): ThreadRole.LOOP}
    assert [s.state for s in samples] == [SampleState.RUNNING, SampleState.WAITING]


def test_anyio_run_on_the_main_thread_is_not_a_worker() -> None:
    frames = (Frame("run", f"{SITE}/anyio/_core/_eventloop.py", 74),
              Frame("run", f"{SITE}/anyio/_backends/_asyncio.py", 2310),
              Frame("BaseEventLoop.run_forever", f"{LIB}/asyncio/base_events.py", 607))
    assert stack_role(frames) is ThreadRole.LOOP
    assert stack_role(()) is None


def test_idle_helper_threads_parked_in_c_waits_are_waiting() -> None:
    from apiscope.collectors.threads import is_waiting
    from apiscope.model import Frame, ThreadRole

    site = "/srv/venv/lib/python3.11/site-packages"
    boot = Frame("_bootstrap", "/usr/lib/python3.11/threading.py", 995)
    parked = (boot, Frame("_connection_worker_thread", f"{site}/aiosqlite/core.py", 59))
    working = (*parked, Frame("_execute", f"{site}/aiosqlite/cursor.py", 40))
    reading = (boot, Frame("SocketIO.readinto", "/usr/lib/python3.11/socket.py", 706))
    assert is_waiting(parked, ThreadRole.OTHER)
    assert not is_waiting(working, ThreadRole.OTHER)
    assert is_waiting(reading, ThreadRole.OTHER)
    # On the event loop thread a handler's own blocking read is a stall, never idleness.
    assert not is_waiting(reading, ThreadRole.LOOP)


def _worker_stack(leaf: Frame) -> tuple[Frame, ...]:
    return (Frame("Thread._bootstrap_inner", f"{LIB}/threading.py", 1045),
            Frame("WorkerThread.run", f"{SITE}/anyio/_backends/_asyncio.py", 967),
            Frame("run_sync", f"{SITE}/anyio/_backends/_asyncio.py", 980), leaf)


def test_a_gil_holder_seen_inactive_is_running() -> None:
    # The recording py-spy had the process stopped, or the thread waited for a core: a thread
    # holding the GIL is executing, whatever the OS said at that instant.
    leaf = Frame("compute", APP, 20)
    sample = StackSample(1, 1, "MainThread", (
        Frame("BaseEventLoop._run_once", f"{LIB}/asyncio/base_events.py", 1922), leaf), 10)
    [out], _ = classify([sample], {(1, 1, leaf): Activity(4, 0, 4)})
    assert (out.state, out.gil) == (SampleState.RUNNING, True)


def test_an_unseen_thread_takes_the_verdict_of_its_line_in_other_threads() -> None:
    sleep = Frame("check_stock", APP, 26)
    compute = Frame("simulate", APP, 33)
    samples = [StackSample(1, tid, f"w{tid}", _worker_stack(leaf), 10)
               for tid in (2, 3) for leaf in (sleep, compute)]
    activity = {(1, 2, sleep): Activity(5, 0, 0), (1, 2, compute): Activity(4, 2, 2)}
    out, _ = classify(samples, activity)
    by_key = {(s.tid, s.frames[-1]): (s.state, s.gil) for s in out}
    assert by_key[(2, sleep)] == (SampleState.BLOCKED, False)
    # thread 3 was never seen: its sleep line is a waiting line in thread 2, GIL unknown
    assert by_key[(3, sleep)] == (SampleState.BLOCKED, None)
    # a line seen computing says nothing about who held the GIL there: running, unknown
    assert by_key[(3, compute)] == (SampleState.RUNNING, None)
    # two looks at a line prove nothing: thread 3 keeps the raw verdict
    few, _ = classify(samples, {(1, 2, sleep): Activity(2, 0, 0)})
    assert {(s.tid, s.frames[-1]): s.state for s in few}[(3, sleep)] is SampleState.RUNNING
