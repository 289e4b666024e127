"""Deterministic demo data: thousands of items with tags, and orders with many lines each.

A fixed random seed makes every start produce the same rows (ids included, in a fresh
database), so slow and fixed runs, and tests, compare like with like.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, insert, select, text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sample_app.db import SEED_LOCK, Item, Order, OrderLine, Tag, item_tags

ADJECTIVES = ("compact", "rugged", "classic", "modern", "vintage", "smart", "quiet", "heavy-duty",
              "portable", "premium", "eco", "wireless", "folding", "deluxe", "mini", "pro")
MATERIALS = ("steel", "oak", "bamboo", "carbon", "ceramic", "leather", "glass", "aluminium",
             "cotton", "walnut", "copper", "wool")
NOUNS = ("kettle", "lamp", "backpack", "chair", "desk", "speaker", "blender", "jacket", "tent",
         "watch", "grinder", "shelf", "router", "headset", "mug", "bicycle", "drill", "camera")
WORDS = ("durable", "lightweight", "design", "everyday", "use", "with", "a", "for", "and",
         "warranty", "easy", "to", "clean", "finish", "handmade", "energy", "efficient", "fits",
         "small", "spaces", "outdoor", "indoor", "adjustable", "height", "battery", "life",
         "travel", "office", "kitchen", "garden", "gift", "ready", "recycled", "materials")
TAGS = ("home", "kitchen", "office", "outdoor", "travel", "sale", "new", "gift", "eco",
        "bestseller", "limited", "tech", "furniture", "sport", "kids", "clearance")
CUSTOMERS = ("acme", "globex", "initech", "umbrella", "hooli", "stark", "wayne", "wonka",
             "tyrell", "cyberdyne", "soylent", "oscorp")
ORDER_LINES = (12, 18)  # every order has at least 10 lines, so the N+1 case is clear
BASE_TIME = datetime(2026, 1, 1)


@dataclass(frozen=True)
class SeedCounts:
    items: int
    orders: int


def order_count(items: int) -> int:
    return max(10, items // 5)


async def seed_if_empty(sessions: async_sessionmaker[AsyncSession], items: int,
                        seed: int) -> SeedCounts:
    """Seed a fresh database; a database that already holds items is left alone."""
    async with sessions() as session, session.begin():
        if session.get_bind().dialect.name == "postgresql":
            # Several gunicorn workers may start at once against one server: seed only once.
            await session.execute(text(f"SELECT pg_advisory_xact_lock({SEED_LOCK})"))
        existing = await session.scalar(select(func.count()).select_from(Item))
        if existing:
            orders = await session.scalar(select(func.count()).select_from(Order))
            return SeedCounts(items=int(existing), orders=int(orders or 0))
        rng = random.Random(seed)
        tag_ids = await _insert_returning(session, Tag, [{"name": name} for name in TAGS])
        item_rows = [_item_row(rng) for _ in range(items)]
        item_ids = await _insert_returning(session, Item, item_rows)
        links = [{"item_id": item_id, "tag_id": tag_id} for item_id in item_ids
                 for tag_id in rng.sample(tag_ids, rng.randint(1, 3))]
        await session.execute(insert(item_tags), links)
        await _seed_orders(session, rng, item_ids, item_rows, order_count(items))
    return SeedCounts(items=items, orders=order_count(items))


def _item_row(rng: random.Random) -> dict[str, object]:
    name = f"{rng.choice(ADJECTIVES)} {rng.choice(MATERIALS)} {rng.choice(NOUNS)}"
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(14, 26)))
    return {"name": name, "description": f"A {name}: {words}.",
            "price_cents": rng.randint(199, 49_999)}


async def _seed_orders(session: AsyncSession, rng: random.Random, item_ids: list[int],
                       item_rows: list[dict[str, object]], orders: int) -> None:
    order_rows = [{"customer": rng.choice(CUSTOMERS),
                   "placed_at": BASE_TIME + timedelta(minutes=rng.randint(0, 300_000))}
                  for _ in range(orders)]
    order_ids = await _insert_returning(session, Order, order_rows)
    prices = {item_id: row["price_cents"] for item_id, row in zip(item_ids, item_rows, strict=True)}
    lines = []
    for order_id in order_ids:
        for item_id in rng.sample(item_ids, rng.randint(*ORDER_LINES)):
            lines.append({"order_id": order_id, "item_id": item_id,
                          "quantity": rng.randint(1, 5), "unit_price_cents": prices[item_id]})
    await session.execute(insert(OrderLine), lines)


async def _insert_returning(session: AsyncSession, table: type[Tag | Item | Order],
                            rows: list[dict[str, object]]) -> list[int]:
    """Insert rows and return the ids the database gave them, in the order of `rows`."""
    statement = insert(table).returning(table.id, sort_by_parameter_order=True)
    result = await session.execute(statement, rows)
    return [int(row_id) for row_id in result.scalars()]
