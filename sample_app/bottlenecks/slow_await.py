"""Bottleneck 8, slow_await: one awaited outside call dominates the route's latency.

`fetch_supplier_quote` stands for an HTTP call to a supplier's API (`asyncio.sleep` for its
round trip). Nothing blocks, the loop stays free, yet every request waits for that one await.
Fix: quotes change rarely, so cache them (the app's async TTL cache). Same responses.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter

from sample_app.deps import ItemSnapshotDep, ResourcesDep
from sample_app.schemas import ItemSnapshot, SupplierQuote

SUPPLIER_CALL_SECONDS = 0.25
QUOTE_TTL_SECONDS = 300.0
SUPPLIERS = ("northwind", "contoso", "fabrikam", "tailspin")


async def fetch_supplier_quote(item: ItemSnapshot) -> dict[str, Any]:
    await asyncio.sleep(SUPPLIER_CALL_SECONDS)  # BOTTLENECK
    return {"item_id": item.id, "supplier": SUPPLIERS[item.id % len(SUPPLIERS)],
            "unit_cost_cents": item.price_cents * 3 // 5, "lead_time_days": 2 + item.id % 12}


async def supplier_quote(item: ItemSnapshotDep) -> SupplierQuote:
    quote = await fetch_supplier_quote(item)
    return SupplierQuote(**quote)


async def supplier_quote_fixed(item: ItemSnapshotDep,
                               resources: ResourcesDep) -> SupplierQuote:
    async def load() -> dict[str, Any]:
        return await fetch_supplier_quote(item)

    quote = await resources.cache.get_or_set(f"quote:{item.id}", load, QUOTE_TTL_SECONDS)
    return SupplierQuote(**quote)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = supplier_quote_fixed if fixed else supplier_quote
    router.add_api_route("/items/{item_id}/quote", handler, methods=["GET"])
    return router
