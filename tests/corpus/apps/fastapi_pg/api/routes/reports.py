"""Report routes with the bottlenecks the corpus plants (mounted only when PLANTED is set)."""

from __future__ import annotations

import time

from fastapi import APIRouter
from sqlmodel import Session, select, text

from ...core.db import engine
from ...models import Item
from ..deps import SessionDep

router = APIRouter(prefix="/reports", tags=["reports"])

AUDIT_CALL_SECONDS = 0.03
# A slow warehouse view: 20 ms in the database.
INVENTORY_SQL = text("SELECT pg_sleep(0.02), count(*) FROM item")


@router.get("/audit")
async def audit_trail() -> dict[str, str]:
    time.sleep(AUDIT_CALL_SECONDS)  # planted: event_loop_blocked wait
    return {"status": "recorded"}


@router.get("/inventory")
async def inventory_snapshot() -> dict[str, int]:
    with Session(engine) as session:
        row = session.exec(INVENTORY_SQL).one()  # planted: event_loop_blocked wait
    return {"items": int(row[1])}


@router.get("/checksum")
async def catalogue_checksum(rounds: int = 60_000) -> dict[str, int]:
    digest = 0
    for n in range(rounds):
        digest = (digest * 31 + n * n) % 1_000_000_007  # planted: event_loop_blocked cpu
    return {"checksum": digest}


@router.get("/owners")
def items_with_owners(session: SessionDep, limit: int = 40) -> list[dict[str, str]]:
    items = session.exec(select(Item).order_by(Item.id).limit(limit)).all()
    rows = []
    for item in items:
        owner = item.owner  # planted: n_plus_one wait
        rows.append({"title": item.title, "owner": owner.email if owner else ""})
    return rows


@router.get("/forecast/{item_id}")
def demand_forecast(item_id: int, days: int = 30) -> dict[str, float]:
    state = item_id
    for _ in range(days * 40000):  # a simulated demand path, in pure Python
        state = (state * 1103515245 + 12345) % 2147483648  # planted: gil_contention cpu
    level = 100.0 * (1.0 + (state / 2147483648 - 0.5) * 0.01)
    return {"item_id": float(item_id), "level": round(level, 3)}


@router.get("/monthly")
def monthly_report(session: SessionDep) -> dict[str, int]:
    month = text("SELECT pg_sleep(0.3), count(*) FROM item")
    row = session.exec(month).one()  # planted: slow_endpoint wait
    return {"items": int(row[1])}
