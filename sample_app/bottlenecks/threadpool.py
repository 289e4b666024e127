"""Bottleneck 6, threadpool_saturation: a sync `def` handler doing slow blocking I/O.

FastAPI runs a plain `def` handler in anyio's worker thread pool. `time.sleep` stands for a slow
legacy (synchronous) warehouse client: each request holds a pool thread for the whole call, so
under concurrency every pool token is busy and requests queue for a thread before they start.
Every other sync handler of the process waits in the same queue.
Fix: make the handler `async def` and await an async client (here `asyncio.sleep`): waiting
then costs no thread at all. Same responses.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter

from sample_app.schemas import StockLevel

# The legacy warehouse client's round trip. The fixed twin still waits for it (the call is as
# slow as ever), but without holding a thread, so nothing else queues behind it.
WAREHOUSE_CALL_SECONDS = 0.15


def check_stock(item_id: int) -> StockLevel:
    time.sleep(WAREHOUSE_CALL_SECONDS)  # BOTTLENECK
    return _stock(item_id)


async def check_stock_fixed(item_id: int) -> StockLevel:
    await asyncio.sleep(WAREHOUSE_CALL_SECONDS)
    return _stock(item_id)


def _stock(item_id: int) -> StockLevel:
    # What the warehouse would answer: deterministic, so slow and fixed runs compare equal.
    # The warehouse knows nothing of our catalogue, so no database lookup here.
    return StockLevel(item_id=item_id, warehouse=("north", "central", "south")[item_id % 3],
                      on_hand=(item_id * 37) % 120)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = check_stock_fixed if fixed else check_stock
    router.add_api_route("/items/{item_id}/stock", handler, methods=["GET"])
    return router
