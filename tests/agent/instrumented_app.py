"""A small FastAPI app that instruments itself, served by a real uvicorn in the tests."""

from __future__ import annotations

import asyncio

from fastapi import APIRouter, FastAPI

import apiscope

app = FastAPI()
router = APIRouter(prefix="/v1")


@app.get("/health")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, int]:
    await asyncio.sleep(0.005)
    return {"item_id": item_id}


@router.get("/reports/{name}")
def report(name: str) -> dict[str, str]:  # a sync handler: runs in anyio's thread pool
    return {"name": name}


@app.get("/boom")
async def boom() -> dict[str, str]:
    raise RuntimeError("boom")  # boom-line


app.include_router(router)
apiscope.instrument(app)
