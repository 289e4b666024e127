"""The shop API: every route `async def`, the database through SQLAlchemy's asyncio engine, a
Redis cache in front of product reads, prices from a pricing service over HTTP (served by the
same app under /pricing, as a sidecar would be), a streamed CSV export, server-sent events, a
long poll for new orders, a background task after each order, and an `@app.middleware("http")`
that stamps each response (Starlette's BaseHTTPMiddleware: the app behind it runs in a task of
its own)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import httpx
import redis.asyncio as aioredis
from fastapi import BackgroundTasks, FastAPI, HTTPException, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from .db import Customer, Order, Product, SessionDep, engine

CACHE_SECONDS = 30


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    app.state.cache = aioredis.from_url(os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0"))
    app.state.http = httpx.AsyncClient(timeout=5.0)
    yield
    await app.state.http.aclose()
    await app.state.cache.aclose()
    await engine.dispose()


app = FastAPI(title="shop", lifespan=lifespan)
new_order = asyncio.Condition()  # notified by each order placed: the long poll waits on it


@app.middleware("http")
async def stamp(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
    started = time.perf_counter()
    response = await call_next(request)
    response.headers["x-request-id"] = uuid.uuid4().hex
    response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


class ProductOut(BaseModel):
    id: int
    title: str
    price_cents: int
    stock: int


class OrderIn(BaseModel):
    customer_id: int = Field(ge=1)
    product_id: int = Field(ge=1)
    quantity: int = Field(ge=1, le=20)


class OrderOut(BaseModel):
    id: int
    customer_id: int
    product_id: int
    quantity: int
    total_cents: int


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/products/{product_id}", response_model=ProductOut)
async def read_product(product_id: int, request: Request, db: SessionDep) -> Any:
    cache = request.app.state.cache
    cached = await cache.get(f"product:{product_id}")
    if cached is not None:
        return json.loads(cached)
    product = await db.get(Product, product_id)
    if product is None:
        raise HTTPException(status_code=404, detail="no such product")
    out = ProductOut.model_validate(product, from_attributes=True)
    await cache.set(f"product:{product_id}", out.model_dump_json(), ex=CACHE_SECONDS)
    return out


@app.get("/customers/{customer_id}/orders", response_model=list[OrderOut])
async def customer_orders(customer_id: int, db: SessionDep, limit: int = 20) -> Any:
    rows = await db.scalars(select(Order).where(Order.customer_id == customer_id)
                            .order_by(Order.id.desc()).limit(limit))
    return rows.all()


async def send_receipt(order_id: int, email: str) -> None:
    await asyncio.sleep(0.02)  # the mail service's round trip


@app.post("/orders", response_model=OrderOut, status_code=201)
async def place_order(order: OrderIn, db: SessionDep, tasks: BackgroundTasks) -> Any:
    product = await db.get(Product, order.product_id)
    customer = await db.get(Customer, order.customer_id)
    if product is None or customer is None:
        raise HTTPException(status_code=404, detail="no such product or customer")
    row = Order(customer_id=customer.id, product_id=product.id, quantity=order.quantity,
                total_cents=order.quantity * product.price_cents)
    db.add(row)
    await db.commit()
    tasks.add_task(send_receipt, row.id, customer.email)
    async with new_order:
        new_order.notify_all()
    return row


@app.get("/orders/wait")
async def wait_for_orders(timeout: float = 1.0) -> Response:
    """A long poll: answers as soon as an order is placed, or 204 after `timeout` seconds (a
    dashboard keeps one pending; it is long by design)."""
    try:
        async with new_order:
            await asyncio.wait_for(new_order.wait(), timeout)
    except TimeoutError:
        return Response(status_code=204)
    return Response('{"new": true}', media_type="application/json")


@app.get("/pricing/{product_id}")
async def pricing(product_id: int, db: SessionDep) -> dict[str, int]:
    price = await db.scalar(select(Product.price_cents).where(Product.id == product_id))
    if price is None:
        raise HTTPException(status_code=404, detail="no such product")
    return {"product_id": product_id, "price_cents": price, "discount_cents": price // 10}


@app.get("/quotes/{product_id}")
async def quote(product_id: int, request: Request, quantity: int = 1) -> dict[str, int]:
    base = os.environ.get("PRICING_URL", str(request.base_url).rstrip("/"))
    response = await request.app.state.http.get(f"{base}/pricing/{product_id}")
    if response.status_code == 404:
        raise HTTPException(status_code=404, detail="no such product")
    price = response.json()
    unit = price["price_cents"] - price["discount_cents"]
    return {"product_id": product_id, "quantity": quantity, "total_cents": unit * quantity}


@app.get("/orders/export.csv")
async def export_orders(limit: int = 300) -> StreamingResponse:
    async def rows() -> AsyncIterator[str]:
        yield "id,customer_id,product_id,quantity,total_cents\n"
        async with AsyncSession(engine) as db:
            result = await db.stream(select(Order).order_by(Order.id).limit(limit))
            async for order in result.scalars():
                yield (f"{order.id},{order.customer_id},{order.product_id},{order.quantity},"
                       f"{order.total_cents}\n")

    return StreamingResponse(rows(), media_type="text/csv")


@app.get("/events")
async def stock_events(count: int = 4, every: float = 0.15) -> StreamingResponse:
    """Server-sent events: a stock level every `every` seconds, `count` of them (a dashboard
    keeps such a stream open; it is long by design)."""
    async def events() -> AsyncIterator[str]:
        for n in range(count):
            await asyncio.sleep(every)
            yield f"event: stock\ndata: {json.dumps({'n': n, 'level': 40 + n})}\n\n"

    return StreamingResponse(events(), media_type="text/event-stream")


@app.get("/stats")
async def stats(db: SessionDep) -> dict[str, int]:
    count, revenue = (await db.execute(select(func.count(Order.id),
                                              func.coalesce(func.sum(Order.total_cents), 0)))).one()
    return {"orders": int(count), "revenue_cents": int(revenue)}


if os.environ.get("CORPUS_PLANTED"):
    from .reports import router

    app.include_router(router)
