"""A FastAPI app for the request-keeping test: a cheap route, a failing one, a slow one."""

from __future__ import annotations

import asyncio

from fastapi import FastAPI, Response

app = FastAPI()


@app.get("/fast")
async def fast() -> dict[str, bool]:
    return {"ok": True}


@app.get("/fail")
async def fail(response: Response) -> dict[str, bool]:
    response.status_code = 503
    return {"ok": False}


@app.get("/slow")
async def slow() -> dict[str, bool]:
    await asyncio.sleep(0.25)  # over the 200 ms objective
    return {"ok": True}
