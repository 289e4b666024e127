"""/orders (list; create, its body validated by a hook), /orders/{order_id}."""

from __future__ import annotations

import falcon
from falcon.asgi import Request, Response
from sqlalchemy import select
from sqlalchemy.orm import joinedload, selectinload

from .. import legacy
from ..config import settings
from ..errors import NotFound, Unprocessable
from ..hooks import validate_body
from ..models import Customer, Order, OrderLine, Product
from ..schemas import OrderIn
from .common import order_summary, page

STATUSES = {"pending", "paid", "shipped", "delivered", "cancelled", "refunded"}


class OrdersResource:
    async def on_get(self, req: Request, resp: Response) -> None:
        limit, offset = page(req)
        status = req.get_param("status")
        stmt = (select(Order, Customer.name)
                .join(Customer, Customer.id == Order.customer_id)
                .order_by(Order.id.desc())
                .limit(limit + 1).offset(offset))
        if status is not None:
            if status not in STATUSES:
                raise falcon.HTTPInvalidParam("unknown status", "status")
            stmt = stmt.where(Order.status == status)
        rows = (await req.context.db.execute(stmt)).all()
        items = [order_summary(o, name) for o, name in rows[:limit]]
        resp.media = {"items": items, "limit": limit, "offset": offset,
                      "next_offset": offset + limit if len(rows) > limit else None}

    @falcon.before(validate_body(OrderIn))
    async def on_post(self, req: Request, resp: Response) -> None:
        payload: OrderIn = req.context.payload
        db = req.context.db
        async with db.begin():
            customer = await db.get(Customer, payload.customer_id)
            if customer is None:
                raise Unprocessable("unknown customer", customer_id=payload.customer_id)
            wanted = {line.product_id: line.quantity for line in payload.lines}
            products = (await db.execute(
                select(Product.id, Product.price_cents, Product.active)
                .where(Product.id.in_(wanted)))).all()
            prices = {p.id: p.price_cents for p in products if p.active}
            missing = sorted(set(wanted) - set(prices))
            if missing:
                raise Unprocessable("unknown or inactive products", product_ids=missing)
            order = Order(customer_id=customer.id, currency=payload.currency, note=payload.note,
                          status="pending",
                          total_cents=sum(prices[p] * q for p, q in wanted.items()))
            order.lines = [OrderLine(product_id=p, quantity=q, unit_price_cents=prices[p])
                           for p, q in wanted.items()]
            db.add(order)
            await db.flush()
            await db.refresh(order, ["created_at"])
            body = order_summary(order)
            body["lines"] = len(order.lines)
        resp.status = falcon.HTTP_201
        resp.location = f"/orders/{order.id}"
        resp.media = body


class OrderResource:
    async def on_get(self, req: Request, resp: Response, order_id: int) -> None:
        stmt = (select(Order)
                .where(Order.id == order_id)
                .options(joinedload(Order.customer),
                         selectinload(Order.lines).joinedload(OrderLine.product)))
        order = (await req.context.db.execute(stmt)).scalar_one_or_none()
        if order is None:
            raise NotFound("order not found", order_id=order_id)
        body = order_summary(order)
        body["note"] = order.note
        customer = order.customer
        body["customer"] = {"id": customer.id, "name": customer.name, "email": customer.email,
                            "country": customer.country}
        body["lines"] = [{"product_id": line.product_id, "sku": line.product.sku,
                          "name": line.product.name, "quantity": line.quantity,
                          "unit_price_cents": line.unit_price_cents,
                          "amount_cents": line.quantity * line.unit_price_cents}
                         for line in order.lines]
        if settings.planted:
            # The old audit module's call, blocking, straight from the async responder.
            body["recent_for_customer"] = legacy.audit_trail(order_id)
        resp.media = body
