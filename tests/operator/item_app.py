"""A small FastAPI app the operator and Prometheus tests serve with real servers.

It does not instrument itself: the tests put the agent in (`apiscope run`, the gunicorn hook).
"""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, HTTPException

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"item_id": item_id}


@app.get("/orders/{order_id}")
def read_order(order_id: int) -> dict[str, int]:  # sync: runs in the thread pool
    if order_id < 0:
        raise HTTPException(status_code=404, detail="no such order")
    return {"order_id": order_id}


@app.get("/slow")
async def slow() -> dict[str, str]:
    await asyncio.sleep(0.25)  # over the default 200 ms SLO, without blocking the loop
    return {"status": "slow"}


@app.get("/boom")
async def boom() -> dict[str, str]:
    raise RuntimeError("boom")
