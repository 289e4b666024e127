"""Bottleneck 3, n_plus_one: an order's lines fetched, then one query per line for its item.

An order has 12-18 lines, so one request sends 14-20 near-identical queries (same statement,
a different item id each time); each round trip is cheap, together they dominate.
Fix: one joined query for the lines and their items' names. The response is identical.
"""

from __future__ import annotations

from fastapi import APIRouter, HTTPException
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sample_app.db import Item, Order, OrderLine
from sample_app.deps import SessionDep
from sample_app.schemas import OrderLineRead, OrderRead


async def read_order(order_id: int, session: SessionDep) -> OrderRead:
    order = await _order(session, order_id)
    statement = select(OrderLine).where(OrderLine.order_id == order_id).order_by(OrderLine.id)
    lines = (await session.scalars(statement)).all()
    out: list[OrderLineRead] = []
    for line in lines:
        one_item = select(Item.name).where(Item.id == line.item_id)
        name = await session.scalar(one_item)  # BOTTLENECK
        out.append(OrderLineRead(item_id=line.item_id, item_name=name or "",
                                 quantity=line.quantity, unit_price_cents=line.unit_price_cents))
    return _order_read(order, out)


async def read_order_fixed(order_id: int, session: SessionDep) -> OrderRead:
    order = await _order(session, order_id)
    statement = (select(OrderLine, Item.name).join(Item, Item.id == OrderLine.item_id)
                 .where(OrderLine.order_id == order_id).order_by(OrderLine.id))
    out = [OrderLineRead(item_id=line.item_id, item_name=name, quantity=line.quantity,
                         unit_price_cents=line.unit_price_cents)
           for line, name in (await session.execute(statement)).all()]
    return _order_read(order, out)


async def _order(session: AsyncSession, order_id: int) -> Order:
    order = await session.get(Order, order_id)
    if order is None:
        raise HTTPException(status_code=404, detail=f"order {order_id} not found")
    return order


def _order_read(order: Order, lines: list[OrderLineRead]) -> OrderRead:
    total = sum(line.quantity * line.unit_price_cents for line in lines)
    return OrderRead(id=order.id, customer=order.customer, placed_at=order.placed_at,
                     lines=lines, total_cents=total)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = read_order_fixed if fixed else read_order
    router.add_api_route("/orders/{order_id}", handler, methods=["GET"])
    return router
