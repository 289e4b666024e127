"""`python -m tests.corpus.apps.falcon_app.prestart`: (re)create the schema and load the data.

200 customers, 500 products, 5,000 orders with 1-6 lines each (executemany inserts).
"""

from __future__ import annotations

import asyncio
import random
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import insert, text

from .config import settings
from .db import make_engine
from .models import Base, Customer, Order, OrderLine, Product

Row = dict[str, Any]

FIRST = ["Anna", "Ben", "Chloe", "David", "Eva", "Felix", "Greta", "Hugo", "Ines", "Jonas",
         "Klara", "Luca", "Maja", "Noah", "Olga", "Paul", "Rosa", "Sven", "Tara", "Yusuf"]
LAST = ["Schmidt", "Dubois", "Garcia", "Rossi", "de Vries", "Nowak", "Silva", "Lindqvist",
        "Keller", "Moreau", "Lopez", "Bianchi", "Jansen", "Kowalski", "Costa", "Berg"]
COUNTRIES = ["DE", "FR", "ES", "IT", "NL", "PL", "PT", "SE"]
ADJ = ["Classic", "Compact", "Deluxe", "Eco", "Heavy-Duty", "Lightweight", "Pro", "Smart",
       "Vintage", "Wireless", "Blue", "Steel", "Bamboo", "Ceramic", "Organic"]
NOUN = ["Water Bottle", "Desk Lamp", "Backpack", "Coffee Grinder", "Notebook", "Headphones",
        "Chair Cushion", "Cutting Board", "Kettle", "Phone Stand", "Yoga Mat", "Umbrella",
        "Toolbox", "Plant Pot", "Travel Mug", "Keyboard", "Blender", "Lunch Box"]
CATEGORIES = ["home", "kitchen", "office", "outdoor", "electronics", "sport"]
SIZES = ["S", "M", "L", "XL", "Mk II", "2024"]
STATUSES = (["delivered"] * 9 + ["shipped"] * 3 + ["paid"] * 3 + ["pending"] * 2
            + ["cancelled", "refunded"])


def build(rng: random.Random, n_customers: int, n_products: int, n_orders: int) -> tuple[
        list[Row], list[Row], list[Row], list[Row]]:
    now = datetime.now(UTC)
    customers: list[Row] = []
    for i in range(1, n_customers + 1):
        first, last = rng.choice(FIRST), rng.choice(LAST)
        customers.append({
            "id": i, "name": f"{first} {last}",
            "email": f"{first}.{last.replace(' ', '')}.{i}@example.com".lower(),
            "country": rng.choice(COUNTRIES),
            "tier": rng.choices(["standard", "gold", "platinum"], [80, 15, 5])[0],
            "created_at": now - timedelta(days=rng.randint(200, 1500)),
        })
    products: list[Row] = []
    for i in range(1, n_products + 1):
        products.append({
            "id": i, "sku": f"SKU-{i:05d}",
            "name": f"{rng.choice(ADJ)} {rng.choice(NOUN)} {rng.choice(SIZES)}",
            "category": rng.choice(CATEGORIES), "price_cents": rng.randint(199, 24999),
            # a few discontinued items, all in the older tail of the catalogue
            "active": not (i > 250 and rng.random() < 0.08),
        })
    orders: list[Row] = []
    lines: list[Row] = []
    line_id = 0
    for oid in range(1, n_orders + 1):
        created = now - timedelta(days=rng.uniform(0, 180))
        total = 0
        for pid in rng.sample(range(1, n_products + 1), rng.randint(1, 6)):
            qty = rng.choices([1, 2, 3, 5], [70, 20, 7, 3])[0]
            price = products[pid - 1]["price_cents"]
            line_id += 1
            lines.append({"id": line_id, "order_id": oid, "product_id": pid, "quantity": qty,
                          "unit_price_cents": price})
            total += qty * price
        orders.append({"id": oid, "customer_id": rng.randint(1, n_customers),
                       "status": rng.choice(STATUSES), "currency": "EUR", "total_cents": total,
                       "note": rng.choice([None, None, None, "gift wrap", "leave at door"]),
                       "created_at": created})
    return customers, products, orders, lines



async def main() -> None:
    engine = make_engine(settings)
    customers, products, orders, lines = build(random.Random(7), 200, 500, 5000)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.drop_all)
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(insert(Customer), customers)
        await conn.execute(insert(Product), products)
        await conn.execute(insert(Order), orders)
        await conn.execute(insert(OrderLine), lines)
        for table in ("customers", "products", "orders", "order_lines"):
            await conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                                    f" (SELECT max(id) FROM {table}))"))
    async with engine.connect() as conn:
        await conn.execute(text("ANALYZE"))
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
