"""/customers, /customers/{customer_id} (suffix `item`), /customers/{customer_id}/orders (suffix
`orders`): one resource, three responders."""

from __future__ import annotations

import hashlib
from typing import Any

from falcon.asgi import Request, Response
from sqlalchemy import func, select

from ..config import settings
from ..errors import NotFound
from ..models import Customer, Order, OrderLine
from .common import dumps, order_summary, page

FNV_OFFSET, FNV_PRIME, MASK32 = 0x811C9DC5, 0x01000193, 0xFFFFFFFF


def orders_checksum(items: list[dict[str, Any]], rounds: int) -> str:
    """FNV-1a over the orders' fields (the reconciliation job's format)."""
    acc = FNV_OFFSET
    for _ in range(rounds):
        for item in items:
            for field in (item["id"], item["status"], item["total_cents"], item["created_at"]):
                for ch in str(field):
                    acc = (acc ^ ord(ch)) * FNV_PRIME & MASK32  # planted: event_loop_blocked cpu
    return f"{acc:08x}"


def customer_out(c: Customer) -> dict[str, Any]:
    return {"id": c.id, "email": c.email, "name": c.name, "country": c.country,
            "tier": c.tier, "created_at": c.created_at}


class CustomersResource:
    async def on_get(self, req: Request, resp: Response) -> None:
        limit, offset = page(req)
        stmt = select(Customer).order_by(Customer.id).limit(limit).offset(offset)
        country = req.get_param("country")
        if country:
            stmt = stmt.where(Customer.country == country.upper())
        customers = (await req.context.db.scalars(stmt)).all()
        resp.media = {"items": [customer_out(c) for c in customers], "limit": limit,
                      "offset": offset}

    async def on_get_item(self, req: Request, resp: Response, customer_id: int) -> None:
        db = req.context.db
        customer = await db.get(Customer, customer_id)
        if customer is None:
            raise NotFound("customer not found", customer_id=customer_id)
        stats = (await db.execute(
            select(func.count(Order.id), func.coalesce(func.sum(Order.total_cents), 0),
                   func.max(Order.created_at))
            .where(Order.customer_id == customer_id, Order.status != "cancelled"))).one()
        body = customer_out(customer)
        body["orders"] = {"count": stats[0], "lifetime_cents": int(stats[1]),
                          "last_at": stats[2]}
        resp.media = body

    async def on_get_orders(self, req: Request, resp: Response, customer_id: int) -> None:
        db = req.context.db
        limit, offset = page(req, default=100)
        exists = await db.scalar(select(Customer.id).where(Customer.id == customer_id))
        if exists is None:
            raise NotFound("customer not found", customer_id=customer_id)
        n_lines = (select(func.count(OrderLine.id)).where(OrderLine.order_id == Order.id)
                   .correlate(Order).scalar_subquery())
        stmt = (select(Order, n_lines.label("n_lines"))
                .where(Order.customer_id == customer_id)
                .order_by(Order.created_at.desc())
                .limit(limit).offset(offset))
        items = []
        for order, lines in (await db.execute(stmt)).all():
            item = order_summary(order)
            item["lines"] = lines
            items.append(item)
        etag = hashlib.blake2b(dumps(items).encode(), digest_size=12).hexdigest()
        if req.get_header("If-None-Match") == etag:
            resp.status = 304
            return
        resp.etag = etag
        if settings.planted:
            resp.set_header("X-Orders-Checksum", orders_checksum(items, rounds=200))
        resp.media = {"customer_id": customer_id, "items": items, "limit": limit,
                      "offset": offset}
