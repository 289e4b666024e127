"""A tiny Litestar app: sync and async handlers with path parameters, one that fails."""

from __future__ import annotations

from litestar import Litestar, get, post
from litestar.params import FromPath


@get("/items/{item_id:int}", sync_to_thread=True)
def read_item(item_id: FromPath[int]) -> dict[str, int]:
    return {"item_id": item_id}


@get("/users/{name:str}/orders")
async def user_orders(name: FromPath[str]) -> dict[str, str]:
    return {"user": name}


@post("/items", sync_to_thread=False)
def create_item() -> dict[str, bool]:
    return {"created": True}


@get("/orders/{order_id:int}/refund")
async def refund(order_id: FromPath[int]) -> dict[str, int]:
    raise LookupError(f"no payment for order {order_id}")  # Litestar answers 500 itself


@get("/health")
async def health() -> str:
    return "ok"


app = Litestar([read_item, user_orders, create_item, refund, health], openapi_config=None)
