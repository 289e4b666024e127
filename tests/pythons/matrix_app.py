"""The app the version matrix serves: Starlette alone, written for every Python from 3.9.

It runs from the target environments (`targets.py`), which hold uvicorn and Starlette but
nothing of apiscope or of the tests, so it imports nothing else.
"""

from __future__ import annotations

import asyncio
import time

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

BLOCK_SECONDS = 0.06


async def read_item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"]})


async def block(request: Request) -> JSONResponse:
    time.sleep(BLOCK_SECONDS)  # deliberately holds the event loop: event_loop_blocked
    return JSONResponse({"ok": True})


async def fetch_part(part: int) -> int:
    time.sleep(BLOCK_SECONDS)  # holds the loop in a task of its own, started by the request
    return part


async def fan_out(request: Request) -> JSONResponse:
    parts = await asyncio.gather(fetch_part(1), fetch_part(2))
    return JSONResponse({"parts": sum(parts)})


async def ping(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/items/{item_id}", read_item), Route("/block", block),
                        Route("/fan-out", fan_out), Route("/ping", ping)])
