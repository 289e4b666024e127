"""Driving a request slice by slice behaves exactly like awaiting it."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from apiscope.agent.profiling import (
    AWAIT,
    Profiled,
    ProfileRun,
    RequestProfiling,
    SliceProfiler,
)


def profiler() -> SliceProfiler:
    profiling = RequestProfiling(deque())
    profiling.load()  # pyinstrument's sampler, as the agent uses it
    assert profiling._factory is not None
    made = profiling._factory(0.001)
    assert isinstance(made, SliceProfiler)
    return made


def test_results_exceptions_and_awaits_pass_through() -> None:
    async def child(n: int) -> int:
        await asyncio.sleep(0.01)
        return n * 2

    async def fails() -> None:
        await asyncio.sleep(0)
        raise KeyError("missing")

    async def main() -> None:
        driven = profiler()
        assert await Profiled(driven, child(21)) == 42
        awaits = [seconds for stack, seconds in driven.records if stack[-1] == AWAIT]
        # One await recorded; the 10 ms are all accounted for, though on a loaded machine the
        # profiler's first slice may start inside the sleep and take part of it.
        assert len(awaits) == 1 and awaits[0] > 0
        assert sum(seconds for _, seconds in driven.records) >= 0.009
        # What the request ran under the profiler: its slices, not the 10 ms it slept.
        assert 0 < driven.spent < 0.009
        with pytest.raises(KeyError, match="missing"):
            await Profiled(profiler(), fails())

    asyncio.run(main())


def test_a_profile_costs_the_cpu_its_slices_used_not_their_time() -> None:
    """A slice that blocks off the CPU (a sync sleep here; on a server of sync routes, the
    GIL the loop thread waits for while pool threads hold it) costs what it ran, not how long
    it took: charged by the clock, the profiles of an API whose loop waited for its pool
    threads read 9-11 ms each, and their budget share four times the allowed."""
    async def blocks() -> None:
        time.sleep(0.05)  # sampled, and on no CPU
        await asyncio.sleep(0)
        time.sleep(0.05)  # timed only once the sampling stops; its bookkeeping is all
        await asyncio.sleep(0)

    async def main() -> SliceProfiler:
        driven = profiler()
        await Profiled(driven, blocks())
        return driven

    driven = asyncio.run(main())
    assert sum(seconds for _, seconds in driven.records) >= 0.1  # the profile has the time
    assert 0 < driven.spent < 0.02  # the cost, the CPU


def test_cancellation_reaches_the_driven_coroutine() -> None:
    cleaned: list[str] = []

    async def slow() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            cleaned.append("finally ran")

    async def request() -> None:
        await Profiled(profiler(), slow())

    async def main() -> None:
        task = asyncio.create_task(request())
        await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert cleaned == ["finally ran"]


# -- a request whose route runs in a task of its own ---------------------------------------

WORK_SECONDS = 0.05


async def _route_work() -> None:
    await asyncio.sleep(WORK_SECONDS)  # route-await


async def _delegating_app(scope: dict[str, object], receive: object, send: object) -> None:
    """As Starlette's BaseHTTPMiddleware does: the rest of the app runs in a task holding the
    scope, which the request's task waits for through an event."""
    done = asyncio.Event()

    async def rest_of_app() -> None:
        assert scope["type"] == "http"
        await _route_work()
        done.set()

    task = asyncio.get_running_loop().create_task(rest_of_app())
    await done.wait()  # the hand-over
    await task


async def _gathering_app(scope: dict[str, object], receive: object, send: object) -> None:
    await asyncio.gather(_route_work(), _route_work())  # gather-line


def _tree(records: object) -> dict[tuple[str, int], tuple[float, float]]:
    """(function, line) -> (time, await seconds) of every node of a profile's tree."""
    from apiscope.agent.profiletree import build_tree

    out: dict[tuple[str, int], tuple[float, float]] = {}
    stack = [build_tree(records, "GET /")]  # type: ignore[arg-type]
    while stack:
        node = stack.pop()
        seen = out.get((node.function, node.line), (0.0, 0.0))
        out[(node.function, node.line)] = (seen[0] + node.time, seen[1] + node.awaited)
        stack.extend(node.children.values())
    return out


def _line(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker))


def _profile(app: object) -> tuple[object, float]:
    run_holder: list[ProfileRun] = []

    async def main() -> float:
        run = ProfileRun(("GET", "/"), profiler())
        run_holder.append(run)
        began = time.perf_counter()
        await run.around(app, {"type": "http", "path": "/"}, None, None)  # type: ignore[arg-type]
        return time.perf_counter() - began

    took = asyncio.run(main())
    return run_holder[0].records, took


def test_a_task_holding_the_request_s_scope_is_followed_into_the_profile() -> None:
    records, took = _profile(_delegating_app)
    nodes = _tree(records)
    # The route's await is in the request's profile, at its line, under the frames that
    # started its task.
    time_, _ = nodes[("_route_work", _line("# route-await"))]
    assert time_ >= WORK_SECONDS * 0.9
    assert ("_delegating_app", _line("# the hand-over")) in nodes
    # The request's own wait for the task is only the hand-over, not the route's 50 ms again.
    handover = sum(a for (function, _), (_, a) in nodes.items()
                   if function == "_delegating_app")
    assert handover < WORK_SECONDS / 2
    total = sum(seconds for _, seconds in records)  # type: ignore[attr-defined]
    assert took * 0.8 <= total <= took * 1.05  # no time counted twice


def test_tasks_without_the_scope_are_not_followed() -> None:
    records, _ = _profile(_gathering_app)
    nodes = _tree(records)
    assert ("_route_work", _line("# route-await")) not in nodes
    _, awaited = nodes[("_gathering_app", _line("# gather-line"))]
    assert awaited >= WORK_SECONDS * 0.9  # the gather's wait stays at the line that waits


def test_the_loop_s_task_factory_is_the_previous_one_after_each_slice() -> None:
    made: list[object] = []

    def counting_factory(loop: asyncio.AbstractEventLoop, coro: object,
                         **kwargs: object) -> asyncio.Task[object]:
        task = asyncio.Task(coro, loop=loop, **kwargs)  # type: ignore[arg-type]
        made.append(task)
        return task

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.set_task_factory(counting_factory)
        run = ProfileRun(("GET", "/"), profiler())
        await run.around(_delegating_app, {"type": "http"}, None, None)
        assert loop.get_task_factory() is counting_factory
        assert len(made) == 1  # the followed task was still made by the app's factory
        assert run.records is not None
        loop.set_task_factory(None)
        await ProfileRun(("GET", "/"), profiler()).around(_delegating_app, {"type": "http"},
                                                          None, None)
        assert loop.get_task_factory() is None

    asyncio.run(main())


def test_a_dump_sees_through_the_driver_into_the_request_s_chain() -> None:
    from apiscope.agent.inflight import await_chain

    async def stuck(event: asyncio.Event) -> None:
        await event.wait()  # stuck-line

    async def main() -> None:
        event = asyncio.Event()

        async def request() -> None:
            await Profiled(profiler(), stuck(event))

        task = asyncio.get_running_loop().create_task(request())
        await asyncio.sleep(0.01)
        chain, awaiting, _ = await_chain(task)
        event.set()
        await task
        functions = [(f["function"].rsplit(".", 1)[-1], f["line"]) for f in chain]
        assert ("stuck", _line("# stuck-line")) in functions
        assert "drive" not in [name for name, _ in functions]
        assert functions[-1][0] == "wait" and awaiting is not None

    asyncio.run(main())


async def _waiting_app(scope: dict[str, object], receive: object, send: object) -> None:
    news = asyncio.Event()
    asyncio.get_running_loop().call_later(0.03, news.set)
    await asyncio.wait_for(news.wait(), 1.0)


def test_an_await_in_wait_for_is_charged_to_what_it_waits_for() -> None:
    # Python 3.11 and older run wait_for's coroutine in a task of its own: the chain goes on
    # in that task, down to the event it waits on.
    records, _ = _profile(_waiting_app)
    waited = sum(a for (function, _), (_, a) in _tree(records).items()
                 if function == "Event.wait")
    assert waited >= 0.025


@asynccontextmanager
async def _connection(lock: asyncio.Lock) -> AsyncIterator[None]:
    async with lock:  # the turn
        yield


async def _queued_app(scope: dict[str, object], receive: object, send: object) -> None:
    # A database wrapper handing out one connection at a time, as LNbits' does: the request
    # waits in the lock, inside the generator `asynccontextmanager` runs.
    lock = asyncio.Lock()
    await lock.acquire()
    asyncio.get_running_loop().call_later(0.03, lock.release)
    async with _connection(lock):
        pass


def test_an_await_inside_an_async_context_manager_is_charged_to_what_it_waits_for() -> None:
    # Entering it awaits a step of its generator, an awaitable that names no frame: the chain
    # goes on in the generator, down to the lock it waits its turn for.
    records, _ = _profile(_queued_app)
    nodes = _tree(records)
    waited = sum(a for (function, _), (_, a) in nodes.items() if function == "Lock.acquire")
    assert waited >= 0.025
    assert ("_connection", _line("# the turn")) in nodes


def test_a_dump_follows_wait_for_into_what_it_waits_for() -> None:
    from apiscope.agent.inflight import await_chain

    async def main() -> None:
        news = asyncio.Event()
        task = asyncio.get_running_loop().create_task(asyncio.wait_for(news.wait(), 5.0))
        await asyncio.sleep(0.01)
        chain, awaiting, _ = await_chain(task)
        news.set()
        await task
        assert chain[-1]["function"].endswith("wait") and "locks.py" in chain[-1]["file"]
        assert awaiting is not None and awaiting.startswith("Future")

    asyncio.run(main())


def test_a_request_served_on_trio_is_profiled_without_following_tasks() -> None:
    """hypercorn -k trio serves Starlette and FastAPI apps through anyio: no asyncio loop. A
    profiled request must be served all the same (it failed with "no running event loop")."""
    trio = pytest.importorskip("trio")
    run_holder: list[ProfileRun] = []
    answered: list[str] = []

    async def app(scope: dict[str, object], receive: object, send: object) -> None:
        await trio.sleep(0.01)
        answered.append(str(scope["path"]))

    async def main() -> None:
        run = ProfileRun(("GET", "/"), profiler())
        run_holder.append(run)
        await run.around(app, {"type": "http", "path": "/"}, None, None)

    trio.run(main)
    assert answered == ["/"]
    records = run_holder[0].records
    assert records is not None and sum(seconds for _, seconds in records) >= 0.009
