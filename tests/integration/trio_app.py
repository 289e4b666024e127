"""A FastAPI app as hypercorn serves it on trio (`hypercorn -k trio`): no asyncio loop."""

from __future__ import annotations

import anyio
from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    await anyio.sleep(0.02)  # an await the agent's per-request profiles are for
    return {"id": item_id}


@app.get("/health")
async def health() -> dict[str, bool]:
    return {"ok": True}
