"""Bottleneck 5, error_rate: `functools.lru_cache` on an `async def` function.

`lru_cache` caches what the function returns, and an `async def` function returns a coroutine
object. The first request for an id awaits it and succeeds; the next request for the same id
gets the same, already awaited coroutine back and fails with
`RuntimeError: cannot reuse already awaited coroutine` (a 500). It looks fine in a quick test
that asks for each id once.
Fix: an async-aware cache that stores results (here the app's TTL cache). Same responses.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from fastapi import APIRouter, HTTPException
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sample_app.db import Item, OrderLine
from sample_app.deps import ResourcesDep
from sample_app.schemas import ItemSummary

SUMMARY_TTL_SECONDS = 30.0


async def load_item_summary(sessions: async_sessionmaker[AsyncSession],
                            item_id: int) -> dict[str, Any] | None:
    async with sessions() as session:
        item = await session.get(Item, item_id)
        if item is None:
            return None
        sold = select(func.count(), func.coalesce(func.sum(OrderLine.quantity), 0)).where(
            OrderLine.item_id == item_id)
        times_ordered, units_sold = (await session.execute(sold)).one()
    return {"item_id": item.id, "name": item.name, "price_cents": item.price_cents,
            "times_ordered": times_ordered, "units_sold": units_sold}


@lru_cache(maxsize=1024)  # the mistake: this caches coroutine objects, not results
async def fetch_item_summary(sessions: async_sessionmaker[AsyncSession],
                             item_id: int) -> dict[str, Any] | None:
    return await load_item_summary(sessions, item_id)


async def item_summary(item_id: int, resources: ResourcesDep) -> ItemSummary:
    summary = await fetch_item_summary(resources.sessions, item_id)  # BOTTLENECK
    return _found(item_id, summary)


async def item_summary_fixed(item_id: int, resources: ResourcesDep) -> ItemSummary:
    async def load() -> dict[str, Any] | None:
        return await load_item_summary(resources.sessions, item_id)

    summary = await resources.cache.get_or_set(f"item-summary:{item_id}", load,
                                               SUMMARY_TTL_SECONDS)
    return _found(item_id, summary)


def _found(item_id: int, summary: dict[str, Any] | None) -> ItemSummary:
    if summary is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return ItemSummary(**summary)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = item_summary_fixed if fixed else item_summary
    router.add_api_route("/items/{item_id}/summary", handler, methods=["GET"])
    return router
