"""Driving a request slice by slice behaves exactly like awaiting it."""

from __future__ import annotations

import asyncio
from collections import deque

import pytest

from apiscope.agent.profiling import AWAIT, Profiled, RequestProfiling, SliceProfiler


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
