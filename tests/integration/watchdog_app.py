"""A tiny FastAPI app whose async route blocks the event loop, for the watchdog test."""

from __future__ import annotations

import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/ping")
async def ping() -> dict[str, bool]:
    return {"ok": True}


@app.get("/block")
async def block() -> dict[str, bool]:
    time.sleep(0.1)  # blocks the event loop: the watchdog must record a stall on this line
    return {"ok": True}
