"""Bottleneck 7, gil_contention: sync `def` handlers doing pure-Python CPU work in threads.

A price forecast by Monte Carlo simulation, in plain Python, in a sync handler: FastAPI runs
it in a pool thread, and several requests at once means several threads taking turns on the
GIL (and the event loop thread waiting for it too). Threads add no parallelism here, only waits.
Fix: the simulation is deterministic per item and horizon, so compute it once and cache it
(`functools.lru_cache` is right for a plain function). Same responses.
"""

from __future__ import annotations

import random
from functools import lru_cache
from typing import Annotated

from fastapi import APIRouter, Query

from sample_app.deps import ItemSnapshotDep
from sample_app.schemas import Forecast

PATHS = 11000
DRIFT = 0.0004
VOLATILITY = 0.04
Days = Annotated[int, Query(ge=1, le=90)]


def simulate_prices(item_id: int, price_cents: int, days: int) -> Forecast:
    rng = random.Random(item_id * 1000 + days)
    finals: list[float] = []
    for _ in range(PATHS):
        price = float(price_cents)
        for _ in range(days):
            price *= 1.0 + DRIFT + VOLATILITY * (rng.random() - 0.5)  # BOTTLENECK
        finals.append(price)
    finals.sort()
    return Forecast(item_id=item_id, days=days,
                    expected_price_cents=round(sum(finals) / len(finals)),
                    p5_price_cents=round(finals[len(finals) * 5 // 100]),
                    p95_price_cents=round(finals[len(finals) * 95 // 100]))


cached_simulation = lru_cache(maxsize=4096)(simulate_prices)


def forecast_price(item: ItemSnapshotDep, days: Days = 30) -> Forecast:
    return simulate_prices(item.id, item.price_cents, days)


def forecast_price_fixed(item: ItemSnapshotDep, days: Days = 30) -> Forecast:
    return cached_simulation(item.id, item.price_cents, days)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = forecast_price_fixed if fixed else forecast_price
    router.add_api_route("/items/{item_id}/forecast", handler, methods=["GET"])
    return router
