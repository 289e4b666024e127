"""`python -m tests.corpus.apps.async_shop.prestart`: create the tables and the first rows."""

from __future__ import annotations

import asyncio

from sqlalchemy import select

from .db import (
    SEED_CUSTOMERS,
    SEED_ORDERS,
    SEED_PRODUCTS,
    Base,
    Customer,
    Order,
    Product,
    Session,
    engine,
)


async def main() -> None:
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with Session() as s:
        if (await s.execute(select(Customer.id).limit(1))).first() is not None:
            return
        s.add_all(Customer(id=n, name=f"Customer {n}", email=f"c{n}@example.com")
                  for n in range(1, SEED_CUSTOMERS + 1))
        s.add_all(Product(id=n, title=f"Product {n}", price_cents=100 + n * 7 % 900,
                          stock=50 + n % 40) for n in range(1, SEED_PRODUCTS + 1))
        await s.flush()
        s.add_all(Order(customer_id=1 + n % SEED_CUSTOMERS, product_id=1 + n % SEED_PRODUCTS,
                        quantity=1 + n % 3, total_cents=(1 + n % 3) * (100 + n % 900))
                  for n in range(SEED_ORDERS))
        await s.commit()
    await engine.dispose()


if __name__ == "__main__":
    asyncio.run(main())
