"""A Starlette-only app (no pydantic, no compiled dependencies), so that the injection tests can
serve it with other Python versions from this environment's pure-Python packages."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def read_item(request: Request) -> JSONResponse:
    return JSONResponse({"item_id": request.path_params["item_id"]})


async def ping(request: Request) -> JSONResponse:
    return JSONResponse({"ok": True})


app = Starlette(routes=[Route("/items/{item_id}", read_item), Route("/ping", ping)])
