"""An instrumented app with one await-bound and one CPU-bound endpoint, served by uvicorn."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI

import apiscope

QUERY_SECONDS = 0.08

app = FastAPI()


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


async def fetch_quote(item_id: int) -> dict[str, int]:
    await asyncio.sleep(QUERY_SECONDS)  # await-line: stands for a slow query
    return {"item_id": item_id, "cents": 100 + item_id}


@app.get("/quotes/{item_id}")
async def read_quote(item_id: int) -> dict[str, int]:
    return await fetch_quote(item_id)


@app.get("/crunch")
async def crunch() -> dict[str, int]:
    await asyncio.sleep(0)  # one trivial await: a CPU-bound route still awaits something
    total = 0
    for i in range(400_000):  # cpu-line
        total += i % 7
    return {"total": total}


apiscope.instrument(app)
