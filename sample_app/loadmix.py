"""The request mix of the load generator: which routes, how often, how many at once.

Shares are tuned so that on a 2-core machine, in a ~25 s run, every bottleneck is exercised
hard enough to be seen while the healthy endpoints stay fast:
- the thread-pool case keeps more requests in flight than the app's pool has tokens (8);
- the GIL case arrives in bursts, so several CPU-bound threads run at once;
- the lru_cache case cycles over a dozen ids, so nearly every request repeats an id;
- CPU-heavy and loop-blocking routes are paced at a few requests per second.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Catalog:
    """What the server seeded: ids 1..items and 1..orders exist."""

    items: int
    orders: int


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    params: dict[str, Any] | None = None
    json: dict[str, Any] | None = None


Builder = Callable[[random.Random, Catalog], Request]


@dataclass(frozen=True)
class Scenario:
    route: str  # METHOD TEMPLATE, the key of the statistics
    workers: int  # its share of the concurrency (out of DEFAULT_CONCURRENCY)
    rate: float | None  # requests per second wanted; None: back to back
    build: Builder
    burst: int = 1  # requests released together at each paced slot


SEARCH_TERMS = ("steel kettle", "bamboo desk", "wireless speaker", "leather backpack",
                "portable lamp", "oak shelf", "carbon bicycle", "ceramic mug", "travel",
                "garden chair", "copper grinder", "wool jacket")
TAGS = ("home", "kitchen", "office", "outdoor", "travel", "sale", "new", "gift")


def _item_id(rng: random.Random, catalog: Catalog) -> int:
    return rng.randint(1, catalog.items)


def _read_item(rng: random.Random, catalog: Catalog) -> Request:
    # A few misses (404) are part of real traffic and must not count as errors.
    item_id = catalog.items * 10 + rng.randint(1, 999) if rng.random() < 0.03 else \
        _item_id(rng, catalog)
    return Request("GET", f"/items/{item_id}")


def _list_items(rng: random.Random, catalog: Catalog) -> Request:
    limit = rng.choice((10, 20, 50))
    return Request("GET", "/items/", params={"limit": limit,
                                             "offset": rng.randint(0, catalog.items - limit)})


def _create_item(rng: random.Random, _catalog: Catalog) -> Request:
    body = {"name": f"load test item {rng.randint(1, 10**9)}",
            "description": "created by the load generator",
            "price_cents": rng.randint(100, 9999), "tags": rng.sample(TAGS, rng.randint(0, 2))}
    return Request("POST", "/items/", json=body)


def _export(rng: random.Random, catalog: Catalog) -> Request:
    # 400 rows render to about 100 KB, all of which the slow twin keeps: ~30 MB a minute.
    return Request("GET", "/catalog/export",
                   params={"offset": rng.randint(0, max(0, catalog.items - 400)), "limit": 400})


def _fixed(method: str, path: str) -> Builder:
    return lambda _rng, _catalog: Request(method, path)


def _per_item(suffix: str, pool: int | None = None, **params: Any) -> Builder:
    """Requests for /items/{id}/<suffix>; with `pool`, ids repeat within the first `pool`."""
    def build(rng: random.Random, catalog: Catalog) -> Request:
        item_id = rng.randint(1, min(pool, catalog.items)) if pool else _item_id(rng, catalog)
        return Request("GET", f"/items/{item_id}/{suffix}", params=params or None)
    return build


def _search(rng: random.Random, _catalog: Catalog) -> Request:
    return Request("GET", "/search", params={"q": rng.choice(SEARCH_TERMS), "limit": 10})


def _order(rng: random.Random, catalog: Catalog) -> Request:
    return Request("GET", f"/orders/{rng.randint(1, catalog.orders)}")


DEFAULT_MIX: tuple[Scenario, ...] = (
    Scenario("GET /health", 1, 3.0, _fixed("GET", "/health")),
    Scenario("GET /items/", 2, 4.0, _list_items),
    Scenario("GET /items/{item_id}", 3, 10.0, _read_item),
    Scenario("POST /items/", 1, 1.5, _create_item),
    Scenario("GET /reports/summary", 2, 4.0, _fixed("GET", "/reports/summary")),
    Scenario("GET /search", 1, 1.2, _search),
    Scenario("GET /orders/{order_id}", 2, 3.0, _order),
    # Three workers: on a busy 2-core machine an export can take half a second, and one worker
    # waiting for each answer would deliver a third of the rate (and of the leak) planned.
    Scenario("GET /catalog/export", 3, 5.0, _export),
    # 12 ids: after the first request for each, every request repeats an id.
    Scenario("GET /items/{item_id}/summary", 2, 4.0, _per_item("summary", pool=12)),
    # Two more workers than the app's 8 pool tokens, asking for more than 8 / 0.15 s = 53 per
    # second: the pool stays saturated. (The fixed twin holds no thread and serves all 55.)
    Scenario("GET /items/{item_id}/stock", 10, 55.0, _per_item("stock")),
    # Bursts of 3 at once. A stock check frees a thread every 19 ms or so, so the three get
    # threads close together and compute at the same time (about 40 ms of CPU each). Few ids,
    # so the fixed twin's cache answers nearly every request.
    Scenario("GET /items/{item_id}/forecast", 3, 2.25, _per_item("forecast", pool=10, days=30),
             burst=3),
    # 5 ids: the fixed twin's cache misses 5 times in a run, well under 5 % of requests.
    Scenario("GET /items/{item_id}/quote", 3, 6.0, _per_item("quote", pool=5)),
)
DEFAULT_CONCURRENCY = sum(scenario.workers for scenario in DEFAULT_MIX)
