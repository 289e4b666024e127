"""An async-safe cache for JSON values: in-process with a TTL, or Redis when REDIS_URL is set.

"Async-safe" means two things `functools.lru_cache` gets wrong on coroutines: it stores
results, never coroutine objects (a coroutine can be awaited only once), and concurrent
misses for one key share a single computation instead of stampeding the backend.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

Loader = Callable[[], Awaitable[Any]]


class AsyncCache(Protocol):
    async def get_or_set(self, key: str, loader: Loader, ttl: float) -> Any:
        """The cached value for `key`, else `await loader()` (None results are not stored)."""
        ...

    async def close(self) -> None: ...


class _SingleFlight:
    """Shares one in-flight load per key between concurrent callers."""

    def __init__(self) -> None:
        self._inflight: dict[str, asyncio.Future[Any]] = {}

    async def _get(self, key: str) -> Any:
        raise NotImplementedError

    async def _set(self, key: str, value: Any, ttl: float) -> None:
        raise NotImplementedError

    async def get_or_set(self, key: str, loader: Loader, ttl: float) -> Any:
        value = await self._get(key)
        if value is not None:
            return value
        future = self._inflight.get(key)
        if future is None:
            future = asyncio.ensure_future(self._load(key, loader, ttl))
            self._inflight[key] = future
            future.add_done_callback(lambda done: self._forget(key, done))
        # shield: one caller giving up (client gone) must not cancel the others' load.
        return await asyncio.shield(future)

    async def _load(self, key: str, loader: Loader, ttl: float) -> Any:
        value = await loader()
        if value is not None:
            await self._set(key, value, ttl)
        return value

    def _forget(self, key: str, done: asyncio.Future[Any]) -> None:
        if self._inflight.get(key) is done:
            del self._inflight[key]
        if not done.cancelled():
            done.exception()  # mark it retrieved: each waiter has already seen it


class MemoryTTLCache(_SingleFlight):
    """A bounded in-process cache: entries expire after their TTL, the oldest go first."""

    def __init__(self, max_entries: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        self._max_entries = max_entries
        self._clock = clock

    def __len__(self) -> int:
        return len(self._entries)

    async def _get(self, key: str) -> Any:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self._clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return value

    async def _set(self, key: str, value: Any, ttl: float) -> None:
        self._entries[key] = (self._clock() + ttl, value)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max_entries:
            self._entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache(_SingleFlight):
    """Values stored as JSON in Redis, shared by every worker process."""

    def __init__(self, client: Any, prefix: str = "sample-app:") -> None:
        super().__init__()
        self._client = client
        self._prefix = prefix

    async def _get(self, key: str) -> Any:
        raw = await self._client.get(self._prefix + key)
        return None if raw is None else json.loads(raw)

    async def _set(self, key: str, value: Any, ttl: float) -> None:
        await self._client.set(self._prefix + key, json.dumps(value), px=max(1, int(ttl * 1000)))

    async def close(self) -> None:
        await self._client.aclose()


def make_cache(redis_url: str | None) -> AsyncCache:
    if not redis_url:
        return MemoryTTLCache()
    try:
        # Optional dependency, imported by name so that it is needed only with REDIS_URL.
        redis_asyncio = importlib.import_module("redis.asyncio")
    except ImportError:
        raise RuntimeError(
            "REDIS_URL is set but the redis package is not installed: "
            "pip install 'redis>=5' or unset REDIS_URL to use the in-process cache"
        ) from None
    return RedisCache(redis_asyncio.from_url(redis_url))
