"""Thread roles and which stacks prove their thread idle, on real py-spy output, hand-built
stacks, and arbitrary ones."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from apiscope.collectors.pyspy import parse_raw
from apiscope.collectors.threads import idle_stacks, is_waiting, stack_role, thread_roles
from apiscope.model import Frame, StackSample, ThreadRole

FIXTURES = Path(__file__).parent / "fixtures"
APP = "/srv/api/app.py"
LIB = "/usr/lib/python3.11"
SITE = "/srv/api/.venv/lib/python3.11/site-packages"


def load(name: str, pid: int = 0) -> tuple[StackSample, ...]:
    return parse_raw((FIXTURES / name).read_text(), default_pid=pid).samples


def idle_counts(samples: tuple[StackSample, ...]) -> dict[tuple[int, bool], int]:
    idle = idle_stacks(samples, thread_roles(samples))
    counts: dict[tuple[int, bool], int] = {}
    for s in samples:
        key = (s.tid, idle[id(s)])
        counts[key] = counts.get(key, 0) + s.count
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


def test_selector_wait_and_idle_workers_are_idle() -> None:
    samples = load("uvicorn_sync_threadpool.txt", pid=9562)
    counts = idle_counts(samples)
    # The loop: 148 samples in EpollSelector.select under _run_once, nothing else waits.
    assert counts[(9562, True)] == 148
    assert counts[(9562, False)] == 199 - 148
    # Workers: idle in Queue.get -> Condition.wait, or in sync_handler (never idle).
    assert counts[(9575, True)] == 40
    assert counts[(9575, False)] == 199 - 40


def test_sleep_in_async_handler_is_not_idle_on_the_loop_thread() -> None:
    samples = load("uvicorn_async_sleep.txt", pid=9507)
    roles = thread_roles(samples)
    assert roles == {(9507, 9507): ThreadRole.LOOP}
    idle = idle_stacks(samples, roles)
    render = [s for s in samples if s.frames[-1] == Frame("render", APP, 9)]
    assert sum(s.count for s in render) == 188
    # The stack alone cannot tell sleeping from computing: that is measured (oncpu.py).
    assert not any(idle[id(s)] for s in render)


def test_concurrent_futures_worker_waiting_in_c_queue_get() -> None:
    base = (Frame("Thread._bootstrap_inner", f"{LIB}/threading.py", 1045),
            Frame("Thread.run", f"{LIB}/threading.py", 982))
    waiting = StackSample(1, 2, "asyncio_0", base + (
        Frame("_worker", f"{LIB}/concurrent/futures/thread.py", 81),), 5)
    busy = StackSample(1, 2, "asyncio_0", base + (
        Frame("_worker", f"{LIB}/concurrent/futures/thread.py", 83),
        Frame("_WorkItem.run", f"{LIB}/concurrent/futures/thread.py", 58),
        Frame("read_file", APP, 12)), 3)
    roles = thread_roles([waiting, busy])
    assert roles == {(1, 2): ThreadRole.WORKER}
    idle = idle_stacks([waiting, busy], roles)
    assert (idle[id(waiting)], idle[id(busy)]) == (True, False)


def test_a_worker_sampled_before_its_worker_loop_does_not_stop_classification() -> None:
    # Django's asgiref starts pool threads on demand: a thread can be sampled in
    # `_bootstrap -> _bootstrap_inner -> run` before its worker frame exists.
    boot = (Frame("Thread._bootstrap", f"{LIB}/threading.py", 1002),
            Frame("Thread._bootstrap_inner", f"{LIB}/threading.py", 1045),
            Frame("Thread.run", f"{LIB}/threading.py", 982))
    early = StackSample(1, 7, "ThreadPoolExecutor-0_0", boot, 2)
    working = StackSample(1, 7, "ThreadPoolExecutor-0_0", boot + (
        Frame("_worker", f"{LIB}/concurrent/futures/thread.py", 83),
        Frame("view", APP, 30)), 5)
    roles = thread_roles([early, working])
    assert roles == {(1, 7): ThreadRole.WORKER}
    idle = idle_stacks([early, working], roles)
    assert (idle[id(early)], idle[id(working)]) == (False, False)


def test_aiosqlite_connection_thread_is_other_and_waits_on_its_queue() -> None:
    frames = (Frame("Thread._bootstrap_inner", f"{LIB}/threading.py", 1045),
              Frame("Thread.run", f"{LIB}/threading.py", 982),
              Frame("_connection_worker_thread", f"{SITE}/aiosqlite/core.py", 59),
              Frame("Queue.get", f"{LIB}/queue.py", 180),
              Frame("Condition.wait", f"{LIB}/threading.py", 331))
    working = frames[:3] + (Frame("Cursor.execute", f"{SITE}/aiosqlite/cursor.py", 48),)
    samples = [StackSample(1, 3, "Thread-2", frames, 90),
               StackSample(1, 3, "Thread-2", working, 2)]
    roles = thread_roles(samples)
    assert roles == {(1, 3): ThreadRole.OTHER}
    idle = idle_stacks(samples, roles)
    assert [idle[id(s)] for s in samples] == [True, False]


def test_uvloop_fixture_loop_is_found_and_idles_below_runner_run() -> None:
    samples = load("uvicorn_uvloop.txt", pid=5025)
    roles = thread_roles(samples)
    assert roles == {(5025, 5025): ThreadRole.LOOP, (5025, 5149): ThreadRole.WORKER,
                     (5025, 5150): ThreadRole.WORKER}
    idle = idle_stacks(samples, roles)
    loop = [s for s in samples if s.tid == 5025]
    runner = Frame("Runner.run", f"{LIB}/asyncio/runners.py", 118)
    assert sum(s.count for s in loop if s.frames[-1] == runner) == 40
    assert all(idle[id(s)] for s in loop if s.frames[-1] == runner)
    handler = [s for s in loop if s.frames[-1] == Frame("render", APP, 9)]
    assert sum(s.count for s in handler) == 102
    assert not any(idle[id(s)] for s in handler)


def test_uvloop_started_by_a_copy_of_asyncio_run_before_python_3_11() -> None:
    # Before 3.11 uvicorn runs its loop with its own copy of asyncio.run (for its loop_factory)
    # and hypercorn with the taskgroup package's backported Runner: under uvloop that frame is
    # the loop thread's leaf while it waits (seen on a Litestar app under uvicorn, Python 3.10:
    # the idle loop was taken for a thread blocked, and not for the loop).
    site = "/srv/api/.venv/lib/python3.10/site-packages"
    for entry in (Frame("asyncio_run", f"{site}/uvicorn/_compat.py", 61),
                  Frame("Runner.run", f"{site}/taskgroup/runners.py", 87)):
        idle = (Frame("main", f"{site}/uvicorn/main.py", 579),
                Frame("Server.run", f"{site}/uvicorn/server.py", 86), entry)
        busy = (*idle, Frame("handler", APP, 9))
        assert stack_role(idle) is ThreadRole.LOOP
        assert is_waiting(idle, ThreadRole.LOOP)
        assert stack_role(busy) is ThreadRole.LOOP and not is_waiting(busy, ThreadRole.LOOP)


def test_granian_on_uvloop_runs_its_loop_from_its_worker_method() -> None:
    # granian's worker calls `loop.run_until_complete` from its own method: under uvloop that
    # frame is the loop thread's leaf while it waits (seen on a Litestar app, granian 2.8:
    # the main thread was "other", and its idle pool threads were read as the server).
    site = "/srv/api/.venv/lib/python3.12/site-packages"
    for method in ("MPServer._spawn_asgi_worker", "MTServer._spawn_asgi_lifespan_worker"):
        idle = (Frame("_bootstrap", "/usr/lib/python3.12/multiprocessing/process.py", 314),
                Frame("WorkerProcess.wrap_target.<locals>.wrapped",
                      f"{site}/granian/server/mp.py", 78),
                Frame(method, f"{site}/granian/server/mp.py", 249))
        busy = (*idle, Frame("handler", APP, 9))
        assert stack_role(idle) is ThreadRole.LOOP and is_waiting(idle, ThreadRole.LOOP)
        assert stack_role(busy) is ThreadRole.LOOP and not is_waiting(busy, ThreadRole.LOOP)
    # Its other methods, and a method of that name elsewhere, start no loop.
    other = (Frame("MPServer.serve", f"{site}/granian/server/mp.py", 520),)
    assert stack_role(other) is ThreadRole.OTHER
    assert stack_role((Frame("Mine._spawn_asgi_worker", APP, 3),)) is ThreadRole.OTHER


def test_anyio_run_on_the_main_thread_is_not_a_worker() -> None:
    frames = (Frame("run", f"{SITE}/anyio/_core/_eventloop.py", 74),
              Frame("run", f"{SITE}/anyio/_backends/_asyncio.py", 2310),
              Frame("BaseEventLoop.run_forever", f"{LIB}/asyncio/base_events.py", 607))
    assert stack_role(frames) is ThreadRole.LOOP
    assert stack_role(()) is None


def test_idle_helper_threads_parked_in_c_waits_are_waiting() -> None:
    boot = Frame("_bootstrap", f"{LIB}/threading.py", 995)
    parked = (boot, Frame("_connection_worker_thread", f"{SITE}/aiosqlite/core.py", 59))
    working = (*parked, Frame("_execute", f"{SITE}/aiosqlite/cursor.py", 40))
    reading = (boot, Frame("SocketIO.readinto", f"{LIB}/socket.py", 706))
    assert is_waiting(parked, ThreadRole.OTHER)
    assert not is_waiting(working, ThreadRole.OTHER)
    assert is_waiting(reading, ThreadRole.OTHER)
    # On the event loop thread a handler's own blocking read is a stall, never idleness.
    assert not is_waiting(reading, ThreadRole.LOOP)


# -- arbitrary stacks: classification never fails --------------------------------------------

_FILES = st.sampled_from([
    APP, f"{LIB}/threading.py", f"{LIB}/queue.py", f"{LIB}/selectors.py",
    f"{LIB}/asyncio/base_events.py", f"{LIB}/asyncio/runners.py",
    f"{LIB}/concurrent/futures/thread.py", f"{SITE}/anyio/_backends/_asyncio.py",
    f"{SITE}/uvloop/__init__.py", f"{SITE}/aiosqlite/core.py", "<frozen runpy>", "", "x"])
_NAMES = st.sampled_from([
    "_worker", "WorkerThread.run", "run_forever", "BaseEventLoop._run_once", "Runner.run",
    "EpollSelector.select", "Queue.get", "Condition.wait", "Thread.run", "<module>", "", "f"])
_FRAMES = st.builds(Frame, _NAMES, _FILES, st.integers(min_value=0, max_value=5000))
_SAMPLES = st.builds(StackSample, st.integers(1, 3), st.integers(1, 4), st.just("t"),
                     st.lists(_FRAMES, max_size=8).map(tuple), st.integers(1, 50))


@given(st.lists(_SAMPLES, max_size=30))
def test_any_stacks_get_a_role_and_an_idle_verdict(samples: list[StackSample]) -> None:
    roles = thread_roles(samples)
    idle = idle_stacks(samples, roles)
    assert set(roles) == {(s.pid, s.tid) for s in samples}
    assert set(idle) == {id(s) for s in samples}
    assert all(idle[id(s)] for s in samples if not s.frames)
