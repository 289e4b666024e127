"""A FastAPI app whose requests get stuck on purpose, for `apiscope dump`.

Behind an `@app.middleware("http")`, as many apps are: Starlette's `BaseHTTPMiddleware` runs
the routes in a task of their own, which the request's task only waits for."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from fastapi import FastAPI, Request, Response

app = FastAPI()
lock = asyncio.Lock()
release = threading.Event()  # set by GET /release: every stuck request then finishes


@app.middleware("http")
async def timing_header(request: Request, call_next: Any) -> Response:
    started = time.perf_counter()
    response: Response = await call_next(request)
    response.headers["server-timing"] = f"app;dur={(time.perf_counter() - started) * 1000:.1f}"
    return response


@app.get("/")
async def root() -> dict[str, bool]:
    return {"ok": True}


@app.get("/slow-await")
async def slow_await() -> dict[str, str]:
    while not release.is_set():
        await asyncio.sleep(0.2)  # SLOW_AWAIT_LINE
    return {"done": "await"}


@app.get("/hold-lock")
async def hold_lock() -> dict[str, str]:
    async with lock:
        while not release.is_set():
            await asyncio.sleep(0.05)  # HOLD_LINE
    return {"done": "hold"}


@app.get("/wait-lock")
async def wait_lock() -> dict[str, str]:
    async with lock:  # WAIT_LOCK_LINE
        return {"done": "lock"}


@app.get("/pool-sleep")
def pool_sleep() -> dict[str, str]:
    while not release.is_set():
        time.sleep(0.05)  # POOL_SLEEP_LINE
    return {"done": "pool"}


@app.get("/release")
async def release_all() -> dict[str, bool]:
    release.set()
    return {"released": True}
