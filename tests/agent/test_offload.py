"""Whose request a pool thread works for: found in the context every way of handing work to a
thread copies, read from the real threads of real executors while they run."""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hashlib
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import anyio.to_thread
import pytest
from asgiref.sync import sync_to_async
from hypothesis import given, settings
from hypothesis import strategies as st

from apiscope.agent import offload
from apiscope.agent.middleware import _Request
from apiscope.agent.offload import OFFLOAD, OffloadCounts, is_offloaded, request_of
from apiscope.agent.paths import AppFiles
from apiscope.agent.queries import CURRENT

HOLD = 0.4  # seconds the handed-off call (C code: time.sleep) keeps its pool thread


def library_only(file: str, function: str) -> bool:
    """Nothing here is the app's: the test's own file is a library to these tests."""
    return False


def run_sync_quart_style(func: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    # quart.utils.run_sync: the running loop's default executor, in a copy of the context.
    loop = asyncio.get_running_loop()
    return loop.run_in_executor(None, contextvars.copy_context().run,
                                functools.partial(func, *args))


HAND_OFFS: dict[str, Callable[[Callable[..., Any], float], Awaitable[Any]]] = {
    "asyncio.to_thread": lambda func, arg: asyncio.to_thread(func, arg),
    "anyio.to_thread (Starlette's run_in_threadpool)":
        lambda func, arg: anyio.to_thread.run_sync(func, arg),
    "copy_context().run in run_in_executor (Quart's run_sync)": run_sync_quart_style,
    "asgiref sync_to_async (Django)": lambda func, arg: sync_to_async(func)(arg),
}


def requests_in_pool_threads(is_app: Callable[[str, str], bool]) -> list[Any]:
    own = threading.get_ident()
    return [request_of(frame, is_app) for ident, frame in sys._current_frames().items()
            if ident != own]


async def handler(hand_off: Callable[[Callable[..., Any], float], Awaitable[Any]],
                  request: Any, is_app: Callable[[str, str], bool]) -> list[Any]:
    """A request's handler awaiting C code in a pool thread; what the looks find meanwhile."""
    CURRENT.set(request)
    work = asyncio.ensure_future(hand_off(time.sleep, HOLD))
    await asyncio.sleep(HOLD / 4)
    try:
        return requests_in_pool_threads(is_app)
    finally:
        await work


@pytest.mark.parametrize("way", sorted(HAND_OFFS))
def test_the_request_is_found_in_the_pool_thread_running_its_handed_off_call(way: str) -> None:
    request = _Request(0.0)
    found = asyncio.run(handler(HAND_OFFS[way], request, library_only))
    assert [r for r in found if r is not None] == [request]


def test_a_pool_thread_running_the_apps_own_code_is_not_handed_off_work() -> None:
    # A sync handler in a pool is found by its own frame: the looks leave it alone.
    def app_function(seconds: float) -> None:
        time.sleep(seconds)

    def is_app(file: str, function: str) -> bool:
        return file == __file__

    found = asyncio.run(_hand(app_function, is_app))
    assert [r for r in found if r is not None] == []


async def _hand(func: Callable[[float], None], is_app: Callable[[str, str], bool]) -> list[Any]:
    CURRENT.set(_Request(0.0))
    work = asyncio.ensure_future(asyncio.to_thread(func, HOLD))
    await asyncio.sleep(HOLD / 4)
    try:
        return requests_in_pool_threads(is_app)
    finally:
        await work


def test_work_without_a_request_in_its_context_asks_the_middleware_to_set_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(OFFLOAD, "wanted", False)

    async def no_request() -> list[Any]:
        work = asyncio.ensure_future(asyncio.to_thread(time.sleep, HOLD))
        await asyncio.sleep(HOLD / 4)
        try:
            return requests_in_pool_threads(library_only)
        finally:
            await work

    assert [r for r in asyncio.run(no_request()) if r is not None] == []
    assert OFFLOAD.wanted is True


def test_an_idle_pool_thread_or_any_other_thread_names_no_request() -> None:
    async def idle() -> list[Any]:
        CURRENT.set(_Request(0.0))
        await asyncio.to_thread(int)  # the pool's thread now waits for work
        return requests_in_pool_threads(AppFiles().is_app)

    assert [r for r in asyncio.run(idle()) if r is not None] == []


def test_stacks_of_py_spys_frames_are_judged_the_same_way() -> None:
    site = "/srv/venv/lib/python3.12/site-packages"
    std = "/usr/lib/python3.12"
    pool = [(f"{std}/threading.py", "Thread._bootstrap"),
            (f"{std}/threading.py", "Thread.run"),
            (f"{std}/concurrent/futures/thread.py", "_worker"),
            (f"{std}/concurrent/futures/thread.py", "_WorkItem.run")]
    app = lambda file, function: file.startswith("/srv/app/")  # noqa: E731
    assert is_offloaded(pool, app)  # C code called from the work item (bcrypt)
    assert is_offloaded(pool + [(f"{site}/asgiref/sync.py", "SyncToAsync.thread_handler"),
                                (f"{site}/argon2/_password_hasher.py", "verify")], app)
    anyio_pool = [(f"{site}/anyio/_backends/_asyncio.py", "WorkerThread.run"),
                  (f"{site}/PIL/Image.py", "resize")]
    assert is_offloaded(anyio_pool, app)
    # A sync handler, a Django view chain: the app's and the framework's, not handed off.
    assert not is_offloaded(pool + [("/srv/app/views.py", "login")], app)
    assert not is_offloaded(pool + [(f"{site}/django/core/handlers/base.py", "_get_response"),
                                    (f"{site}/psycopg/cursor.py", "execute")], app)
    # An idle worker waiting for its next item, a worker handing its result to the loop.
    assert not is_offloaded(anyio_pool[:1] + [(f"{std}/queue.py", "Queue.get"),
                                              (f"{std}/threading.py", "Condition.wait")], app)
    assert not is_offloaded(anyio_pool[:1] + [
        (f"{std}/asyncio/base_events.py", "BaseEventLoop.call_soon_threadsafe"),
        (f"{std}/asyncio/selector_events.py", "BaseSelectorEventLoop._write_to_self")], app)
    assert not is_offloaded([(f"{std}/threading.py", "Thread.run")], app)  # no pool at all
    assert not is_offloaded([], app)


def test_counts_add_up_per_route_until_drained() -> None:
    counts = OffloadCounts()
    counts.add("POST", "/login", 2, 0.25)
    counts.add("POST", "/login", 1)
    counts.add("GET", "/report", 4)
    assert sorted(counts.drain()) == [("GET", "/report", 4, 0.0), ("POST", "/login", 3, 0.25)]
    assert counts.drain() == []
    for n in range(offload.MAX_ROUTES + 10):
        counts.add("GET", f"/r{n}", 1)
    assert len(counts.drain()) == offload.MAX_ROUTES


FILES = st.sampled_from([
    "/usr/lib/python3.12/concurrent/futures/thread.py", "/usr/lib/python3.12/threading.py",
    "/usr/lib/python3.12/queue.py", "/srv/venv/lib/python3.12/site-packages/anyio/_backends/"
    "_asyncio.py", "/srv/venv/lib/python3.12/site-packages/django/core/handlers/base.py",
    "/srv/venv/lib/python3.12/site-packages/bcrypt/__init__.py", "/srv/app/views.py", "",
    "<frozen importlib._bootstrap>", "C:\\app\\x.py"])
FRAMES = st.lists(st.tuples(FILES, st.sampled_from(
    ["run", "_WorkItem.run", "WorkerThread.run", "_worker", "get", "login", "<module>", ""])),
    max_size=12)


def app_files(file: str, function: str) -> bool:
    return file.startswith("/srv/app/")


@given(FRAMES)
@settings(max_examples=300, deadline=None)
def test_any_stack_is_judged_without_raising_and_nothing_above_the_work_is_the_apps(
        frames: list[tuple[str, str]]) -> None:
    offloaded = is_offloaded(frames, app_files)
    if offloaded:
        last_worker = max(i for i, (file, function) in enumerate(frames)
                          if offload.is_worker_run(file, function))
        assert not any(app_files(*frame) for frame in frames[last_worker + 1:])
    # The app's own frame at the leaf, or no worker at all: never handed-off work.
    assert not is_offloaded([*frames, ("/srv/app/views.py", "login")], app_files)
    assert not is_offloaded([f for f in frames if not offload.is_worker_run(*f)], app_files)


# -- the calls handed to pools, timed by their threads' CPU clocks ------------------------------

ROUNDS = 300_000  # PBKDF2 rounds: tens of milliseconds of C code that holds no Python frame


def pbkdf2(rounds: int) -> bytes:
    return hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", rounds)


def c_call_cpu() -> float:
    """The CPU seconds the handed-off C call takes when this thread runs it itself."""
    started = time.thread_time()
    hashlib.pbkdf2_hmac("sha256", b"secret", b"salt", ROUNDS)
    return time.thread_time() - started


TIMED_HAND_OFFS: dict[str, Callable[[], Awaitable[Any]]] = {
    "asyncio.to_thread": lambda: asyncio.to_thread(
        hashlib.pbkdf2_hmac, "sha256", b"secret", b"salt", ROUNDS),
    "anyio.to_thread (Starlette's run_in_threadpool)": lambda: anyio.to_thread.run_sync(
        functools.partial(hashlib.pbkdf2_hmac, "sha256", b"secret", b"salt", ROUNDS)),
    "copy_context().run in run_in_executor (Quart's run_sync)": lambda: run_sync_quart_style(
        hashlib.pbkdf2_hmac, "sha256", b"secret", b"salt", ROUNDS),
    "asgiref sync_to_async (Django)": lambda: sync_to_async(hashlib.pbkdf2_hmac)(
        "sha256", b"secret", b"salt", ROUNDS),
    "run_in_executor (Falcon's sync_to_async)": lambda: asyncio.get_running_loop(
        ).run_in_executor(None, functools.partial(hashlib.pbkdf2_hmac, "sha256", b"secret",
                                                  b"salt", ROUNDS)),
}


@pytest.fixture
def timing(monkeypatch: pytest.MonkeyPatch) -> Iterator[offload.PoolTiming]:
    import concurrent.futures

    monkeypatch.setattr(OFFLOAD, "wanted", False)  # what a call without a request sets
    offload.uninstall_pool_timing()  # an agent started by another test of this process
    before = (concurrent.futures.ThreadPoolExecutor.submit, anyio.to_thread.run_sync)
    installed = offload.install_pool_timing(library_only)
    try:
        yield installed
    finally:
        offload.uninstall_pool_timing()
    assert (concurrent.futures.ThreadPoolExecutor.submit, anyio.to_thread.run_sync) == before


async def timed_request(hand_off: Callable[[], Awaitable[Any]]) -> tuple[Any, list[Any]]:
    request = _Request(0.0)
    CURRENT.set(request)
    work = asyncio.ensure_future(hand_off())
    await asyncio.sleep(0.005)
    found = requests_in_pool_threads(library_only)  # the looks see through the timing
    await work
    return request, found


@pytest.mark.parametrize("way", sorted(TIMED_HAND_OFFS))
def test_a_handed_off_c_call_is_timed_for_its_request_by_its_threads_cpu_clock(
        way: str, timing: offload.PoolTiming) -> None:
    alone = min(c_call_cpu() for _ in range(3))
    request, found = asyncio.run(timed_request(TIMED_HAND_OFFS[way]))
    assert 0.5 * alone <= request.pool_cpu <= 2.0 * alone + 0.01, (request.pool_cpu, alone)
    # A look that caught the call at work names the request through the timing (Falcon's way
    # copies no context: no look can name it, and the timing is all there is).
    assert [r for r in found if r is not None] in ([], [request])
    assert timing.errors == 0


@pytest.mark.parametrize("way", sorted(HAND_OFFS))
def test_the_looks_find_the_request_through_the_timing(way: str,
                                                       timing: offload.PoolTiming) -> None:
    request = _Request(0.0)
    found = asyncio.run(handler(HAND_OFFS[way], request, library_only))
    assert [r for r in found if r is not None] == [request]
    assert 0 <= request.pool_cpu < 0.05  # the call slept: timed, and it took no CPU


def test_a_sleep_handed_off_costs_no_cpu_and_the_apps_own_code_is_not_timed(
        timing: offload.PoolTiming) -> None:
    def app_sleep(seconds: float) -> None:  # judged the app's: its frames name the route
        time.sleep(seconds)

    async def both() -> tuple[Any, Any]:
        request = _Request(0.0)
        CURRENT.set(request)
        await asyncio.to_thread(time.sleep, 0.05)
        slept = request.pool_cpu
        timing._is_app = lambda file, function: file == __file__
        await asyncio.to_thread(app_sleep, 0.01)
        await asyncio.to_thread(pbkdf2, 1000)  # the app's function, C code below it
        return slept, request.pool_cpu

    slept, after = asyncio.run(both())
    assert 0 <= slept < 0.01
    assert after == slept  # not timed at all


def test_what_a_pool_call_comes_down_to() -> None:
    from asgiref.sync import SyncToAsync

    context = contextvars.copy_context()
    assert offload.callee(functools.partial(context.run, pbkdf2, 3)) is pbkdf2
    assert offload.callee(context.run, (functools.partial(pbkdf2, 3),)) is pbkdf2
    assert offload.callee(functools.partial(SyncToAsync(pbkdf2).thread_handler, None, None,
                                            [], None, None)) is pbkdf2
    assert offload.callee(offload.TimedCall(hashlib.sha256, None)) is hashlib.sha256
    assert offload.callee(AppFiles().is_app) is AppFiles.is_app


def test_the_timing_frame_is_left_out_of_py_spys_stacks() -> None:
    from apiscope.collectors.pyspy import parse_line

    agent = "/srv/venv/lib/python3.12/site-packages/apiscope/agent/offload.py"
    line = ("thread (7): ThreadPoolExecutor-0_0;_bootstrap (/usr/lib/python3.12/threading.py:"
            "1030);_worker (/usr/lib/python3.12/concurrent/futures/thread.py:92);run (/usr/lib/"
            f"python3.12/concurrent/futures/thread.py:58);TimedCall.__call__ ({agent}:230) 5")
    sample = parse_line(line)
    assert sample is not None
    assert [f.function for f in sample.frames] == ["_bootstrap", "_worker", "run"]


def test_a_dump_of_a_pool_thread_leaves_the_timing_frame_out() -> None:
    from apiscope.agent.inflight import thread_stack

    started, release = threading.Event(), threading.Event()

    def work() -> None:  # stands for the handed-off call, waiting while the dump is taken
        started.set()
        release.wait(10)

    thread = threading.Thread(target=offload.TimedCall(work, _Request(0.0)))
    thread.start()
    try:
        assert started.wait(10)
        assert thread.ident is not None
        stack = thread_stack(sys._current_frames()[thread.ident])
    finally:
        release.set()
        thread.join(10)
    files = [str(frame["file"]) for frame in stack]
    assert not any(file.endswith("agent/offload.py") for file in files)
    assert any(file == __file__ for file in files)  # the call's own frame is there


def test_each_request_notes_the_threads_that_ran_its_handed_calls(
        timing: offload.PoolTiming) -> None:
    # Django's ASGI handler: each request in a `ThreadSensitiveContext` of its own, whose sync
    # code (middleware, view) runs in a thread of that context's own executor, app code and
    # framework code alike (neither is timed). Two requests at once: two threads, each noted
    # on its own request only.
    from asgiref.sync import ThreadSensitiveContext

    def view(ran: list[int]) -> None:
        ran.append(threading.get_native_id())
        time.sleep(0.02)

    async def serve() -> tuple[Any, list[int]]:
        request, ran = _Request(0.0), []
        CURRENT.set(request)
        async with ThreadSensitiveContext():
            await sync_to_async(view)(ran)
            await sync_to_async(view)(ran)  # the same request's thread again
        return request, ran

    async def both() -> list[tuple[Any, list[int]]]:
        return list(await asyncio.gather(serve(), serve()))

    timing._is_app = lambda file, function: file == __file__  # the view is the app's
    served = asyncio.run(both())
    for request, ran in served:
        assert len(set(ran)) == 1 and request.threads == ran[:1]
        assert request.pool_cpu == 0.0
    assert served[0][1][0] != served[1][1][0]
    assert timing.errors == 0


def test_spans_keep_each_threads_first_start_and_last_end_per_route_until_drained() -> None:
    spans = offload.ThreadSpans()
    spans.add([7], "GET", "/a", 10.0, 10.5)
    spans.add([7, 8], "GET", "/a", 9.0, 12.0)
    spans.add([7], "POST", "/b", 11.0, 11.2)
    assert sorted(spans.drain()) == [(7, "GET", "/a", 9.0, 12.0, 2),
                                     (7, "POST", "/b", 11.0, 11.2, 1),
                                     (8, "GET", "/a", 9.0, 12.0, 1)]
    assert spans.drain() == []
    for tid in range(offload.MAX_SPANS + 10):  # bounded between two pulls
        spans.add([tid], "GET", "/a", 1.0, 2.0)
    assert len(spans.drain()) == offload.MAX_SPANS
