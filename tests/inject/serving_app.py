"""A small FastAPI app that the injection tests serve with uvicorn and gunicorn.

It measures its own event loop's stalls: a task that wakes every 5 ms records the longest gap
beyond that, which is how long injection kept the loop from running (gdb's stop of the whole
process plus the bootstrap's run on the main thread).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

TICK = 0.005


class LoopStallProbe:
    def __init__(self) -> None:
        self.max_stall = 0.0
        self.ticks = 0

    async def run(self) -> None:
        last = time.perf_counter()
        while True:
            await asyncio.sleep(TICK)
            now = time.perf_counter()
            self.max_stall = max(self.max_stall, now - last - TICK)
            self.ticks += 1
            last = now


probe = LoopStallProbe()


@asynccontextmanager
async def lifespan(_: FastAPI) -> AsyncIterator[None]:
    task = asyncio.create_task(probe.run())
    ready = os.environ.get("SERVING_APP_READY_DIR")
    if ready:  # tests wait for each worker's file: that worker has loaded the app
        open(os.path.join(ready, f"ready-{os.getpid()}"), "w").close()
    yield
    task.cancel()


app = FastAPI(lifespan=lifespan)


@app.get("/items/{item_id}")
async def read_item(item_id: int) -> dict[str, object]:
    return {"item_id": item_id, "name": f"item {item_id}"}


@app.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


@app.get("/stall")
async def stall(reset: bool = False) -> dict[str, float]:
    """The longest loop stall so far, in ms; `reset=true` starts a new measurement."""
    found = {"max_stall_ms": probe.max_stall * 1000.0, "ticks": float(probe.ticks)}
    if reset:
        probe.max_stall = 0.0
    return found
