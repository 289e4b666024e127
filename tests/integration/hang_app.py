"""A FastAPI app whose requests hang: a pool of two connections (a semaphore, as a database
pool is) that `/report` takes twice, once through the route's dependency and once more inside.
Two reports at once hold both connections and wait for a third: from then on every request
that needs a connection waits forever, as a server whose pool deadlocked does.

Beside it, requests that run long by design and must not be taken for hung ones: a long poll
(`/poll` waits up to a minute for an event) and a stream whose response has begun (`/stream`).
A `BaseHTTPMiddleware` (`@app.middleware("http")`) runs the app behind it in a task of its
own, so the request's await chain continues in that task.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from fastapi import Depends, FastAPI, Request, Response
from fastapi.responses import StreamingResponse


def create_app() -> FastAPI:
    """A new app with a pool of its own (a hung pool stays hung: each test makes its app)."""
    app = FastAPI()
    pool = asyncio.Semaphore(2)
    news = asyncio.Event()

    @app.middleware("http")
    async def server_timing(request: Request, call_next):  # type: ignore[no-untyped-def]
        response: Response = await call_next(request)
        response.headers["Server-Timing"] = "app"
        return response

    async def connection() -> AsyncIterator[None]:
        async with pool:  # LINE: waits for a connection
            yield

    @app.get("/items/{item_id}")
    async def item(item_id: int, _: None = Depends(connection)) -> dict[str, int]:
        await asyncio.sleep(0.002)  # the query
        return {"id": item_id}

    @app.get("/report")
    async def report(_: None = Depends(connection)) -> dict[str, str]:
        await asyncio.sleep(0.05)
        async with pool:  # a second connection while holding the first
            return {"report": "ready"}

    @app.get("/poll")
    async def poll() -> dict[str, bool]:
        try:
            await asyncio.wait_for(news.wait(), 60)
        except TimeoutError:
            return {"news": False}
        return {"news": True}

    @app.get("/stream")
    async def stream() -> StreamingResponse:
        async def ticks() -> AsyncIterator[str]:
            for n in range(600):
                yield f"data: {n}\n\n"
                await asyncio.sleep(0.1)

        return StreamingResponse(ticks(), media_type="text/event-stream")

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


app = create_app()
