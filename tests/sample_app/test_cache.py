"""The async-safe cache: TTL, bounds, and one load per key under concurrency."""

from __future__ import annotations

import asyncio

import pytest

from sample_app.cache import MemoryTTLCache, make_cache
from tests.support import FakeClock


def test_values_expire_after_their_ttl() -> None:
    clock = FakeClock(100.0)
    cache = MemoryTTLCache(clock=clock)
    loads: list[int] = []

    async def load() -> dict[str, int]:
        loads.append(1)
        return {"n": len(loads)}

    async def scenario() -> list[object]:
        first = await cache.get_or_set("k", load, ttl=10)
        clock.now += 9.9
        second = await cache.get_or_set("k", load, ttl=10)
        clock.now += 0.2
        third = await cache.get_or_set("k", load, ttl=10)
        return [first, second, third]

    assert asyncio.run(scenario()) == [{"n": 1}, {"n": 1}, {"n": 2}]


def test_concurrent_misses_share_one_load() -> None:
    cache = MemoryTTLCache()
    calls = 0

    async def slow_load() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.01)
        return "value"

    async def scenario() -> list[object]:
        return list(await asyncio.gather(*(cache.get_or_set("k", slow_load, 60)
                                           for _ in range(20))))

    assert asyncio.run(scenario()) == ["value"] * 20
    assert calls == 1


def test_none_and_errors_are_not_cached() -> None:
    cache = MemoryTTLCache()
    results: list[object] = [None, ValueError("boom"), "ok"]

    async def load() -> object:
        result = results.pop(0)
        if isinstance(result, Exception):
            raise result
        return result

    async def scenario() -> list[object]:
        missing = await cache.get_or_set("k", load, 60)
        with pytest.raises(ValueError, match="boom"):
            await cache.get_or_set("k", load, 60)
        return [missing, await cache.get_or_set("k", load, 60), len(cache)]

    assert asyncio.run(scenario()) == [None, "ok", 1]


def test_the_oldest_entries_go_first_when_full() -> None:
    cache = MemoryTTLCache(max_entries=3)

    async def scenario() -> int:
        for key in "abcde":
            async def load(key: str = key) -> str:
                return key
            await cache.get_or_set(key, load, 60)
        return len(cache)

    assert asyncio.run(scenario()) == 3


def test_without_redis_url_the_cache_is_in_process() -> None:
    assert isinstance(make_cache(None), MemoryTTLCache)
