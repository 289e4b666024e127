"""Report routes with the bottlenecks the corpus plants (included only when CORPUS_PLANTED is
set)."""

from __future__ import annotations

import hashlib

from fastapi import APIRouter
from sqlalchemy import select, text

from .db import Customer, Order, SessionDep

router = APIRouter(prefix="/reports")

SIGNING_SECRET = b"export-signing-secret"
ROUNDS = 100_000
# The ledger is a slow view in the database: 250 ms.
LEDGER_SQL = text("SELECT pg_sleep(0.25), count(*) FROM shop_order")


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
