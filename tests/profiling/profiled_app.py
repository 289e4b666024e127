"""An instrumented app with one await-bound and one CPU-bound endpoint, served by uvicorn.

With `PROFILED_APP_HTTP_MIDDLEWARE=1`, the routes sit behind two `@app.middleware("http")`
(Starlette's BaseHTTPMiddleware), as in many apps: each runs the app behind it in a task of
its own."""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Awaitable, Callable

from fastapi import FastAPI, Request, Response

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


if os.environ.get("PROFILED_APP_HTTP_MIDDLEWARE") == "1":
    @app.middleware("http")
    async def timing(request: Request,
                     call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        started = time.perf_counter()
        response = await call_next(request)
        response.headers["server-timing"] = f"app;dur={time.perf_counter() - started:.4f}"
        return response

    @app.middleware("http")
    async def request_id(request: Request,
                         call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        response.headers["x-request-id"] = "1"
        return response


apiscope.instrument(app)
