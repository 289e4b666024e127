"""The small FastAPI app the attach and run tests profile."""

from __future__ import annotations

import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@app.get("/block")
async def block() -> dict[str, bool]:
    time.sleep(0.03)  # deliberately blocks the event loop
    return {"ok": True}


@app.get("/sync")
def sync_handler() -> dict[str, bool]:
    total = 0
    for i in range(200_000):  # CPU work in a thread-pool thread
        total += i * i
    return {"ok": total > 0}
