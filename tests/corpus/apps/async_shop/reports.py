"""Report routes with the bottlenecks the corpus plants (included only when CORPUS_PLANTED is
set)."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter
from pydantic import BaseModel
from sqlalchemy import select, text

from .db import Customer, Order, SessionDep

router = APIRouter(prefix="/reports")

SIGNING_SECRET = b"export-signing-secret"
ROUNDS = 100_000
# The ledger is a slow view in the database: 250 ms.
LEDGER_SQL = text("SELECT pg_sleep(0.25), count(*) FROM shop_order")


class PriceListEntry(BaseModel):
    sku: str
    region: str
    currency: str
    price_cents: int
    tax_cents: int


REGIONS = [("de", "EUR", 19), ("fr", "EUR", 20), ("it", "EUR", 22), ("es", "EUR", 21),
           ("nl", "EUR", 21), ("pl", "PLN", 23), ("se", "SEK", 25), ("dk", "DKK", 25),
           ("cz", "CZK", 21), ("uk", "GBP", 20)]
# Every product in every region, built once: the whole list goes out on each request.
PRICE_LIST = [{"sku": f"SKU-{n:05d}", "region": region, "currency": currency,
               "price_cents": 100 + n % 9000, "tax_cents": (100 + n % 9000) * vat // 100}
              for n in range(2000) for region, currency, vat in REGIONS]


@router.get("/top-customers")
async def top_customers(db: SessionDep, limit: int = 25) -> list[dict[str, object]]:
    orders = (await db.scalars(select(Order).order_by(Order.total_cents.desc(), Order.id)
                               .limit(limit))).all()
    out = []
    for order in orders:
        by_id = select(Customer).where(Customer.id == order.customer_id)
        customer = await db.scalar(by_id)  # planted: n_plus_one wait
        out.append({"order": order.id, "customer": customer.name if customer else ""})
    return out


@router.get("/ledger")
async def ledger_balance(db: SessionDep) -> dict[str, int]:
    result = await db.execute(LEDGER_SQL)  # planted: slow_await wait
    row = result.one()
    return {"orders": int(row[1])}


@router.get("/signed-export")
async def signed_export(customer_id: int = 1) -> dict[str, str]:
    salt, secret = f"customer-{customer_id}".encode(), SIGNING_SECRET
    key = hashlib.pbkdf2_hmac("sha256", secret, salt, ROUNDS)  # planted: event_loop_blocked native
    return {"customer_id": str(customer_id), "signature": key.hex()}


@router.get("/price-list", response_model=list[PriceListEntry])
async def price_list() -> list[dict[str, object]]:
    # FastAPI validates and serialises the 20,000 entries on the event loop, after this
    # returns: no line of the app runs while it does.
    return PRICE_LIST  # planted: event_loop_blocked cpu
