"""The portal: a plain Starlette site (no FastAPI) written as server-rendered sites are: Jinja2
pages, a request-logging `BaseHTTPMiddleware`, gzip, sync endpoints on SQLite (Starlette runs
them in its thread pool), a class-based endpoint, static files, a websocket, a background task
after each comment and a password hash in a worker thread (CORPUS_PLANTED adds the reports
and the export with planted bottlenecks)."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import time
from pathlib import Path

from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.endpoints import HTTPEndpoint
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware, RequestResponseEndpoint
from starlette.middleware.gzip import GZipMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.websockets import WebSocket

from . import store

HERE = Path(__file__).resolve().parent
PLANTED = os.environ.get("CORPUS_PLANTED") == "1"
AUDIT_CALL_SECONDS = 0.03
HASH_ROUNDS = 30_000
log = logging.getLogger("portal")
templates = Jinja2Templates(directory=HERE / "templates")
LIST = "articles.html"


class RequestLog(BaseHTTPMiddleware):
    """Times every request into a header and the log, as sites add by hand."""

    async def dispatch(self, request: Request, call_next: RequestResponseEndpoint) -> Response:
        started = time.perf_counter()
        if PLANTED and request.url.path.startswith("/api/export"):
            time.sleep(AUDIT_CALL_SECONDS)  # planted: event_loop_blocked wait
        response = await call_next(request)
        elapsed = time.perf_counter() - started
        response.headers["server-timing"] = f"app;dur={elapsed * 1000:.1f}"
        log.debug("%s %s %.1f ms", request.method, request.url.path, elapsed * 1000)
        return response


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def articles(request: Request) -> Response:
    rows = await run_in_threadpool(store.latest, 30)
    context = {"title": "Latest", "articles": rows}
    return templates.TemplateResponse(request, LIST, context)


def article(request: Request) -> Response:
    found = store.article(request.path_params["article_id"])
    if found is None:
        return JSONResponse({"detail": "not found"}, status_code=404)
    return JSONResponse(found)


def search(request: Request) -> Response:
    term = request.query_params.get("q", "")
    return JSONResponse(store.search(term, int(request.query_params.get("limit", "20"))))


async def comment(request: Request) -> Response:
    data = await request.json()
    task = BackgroundTask(store.add_comment, int(data["article_id"]), str(data["body"]))
    return JSONResponse({"queued": True}, status_code=202, background=task)


async def login(request: Request) -> Response:
    data = await request.json()
    salt = data["user"].encode().ljust(16, b".")
    key = await asyncio.to_thread(hashlib.pbkdf2_hmac, "sha256", data["password"].encode(),
                                  salt, HASH_ROUNDS)
    return JSONResponse({"token": key.hex()[:32]})


class Stats(HTTPEndpoint):
    async def get(self, request: Request) -> Response:
        rows = await run_in_threadpool(store.latest, 200)
        authors = {row["author"] for row in rows}
        return JSONResponse({"articles": len(rows), "authors": len(authors)})


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_text(await websocket.receive_text())
    await websocket.close()


# -- planted ----------------------------------------------------------------------------------

async def digest(request: Request) -> Response:
    rows = await run_in_threadpool(store.latest, 1500)
    page = {"title": "Digest", "articles": rows * 2}
    return templates.TemplateResponse(request, LIST, page)  # planted: event_loop_blocked cpu


def keywords(request: Request) -> Response:
    counts: dict[str, int] = {}
    for body in store.bodies(1500):
        for word in body.split():
            counts[word] = counts.get(word, 0) + 1  # planted: cpu_hotspot cpu
    return JSONResponse(sorted(counts.items(), key=lambda kv: -kv[1])[:10])


async def export(request: Request) -> Response:
    return JSONResponse(await run_in_threadpool(store.latest, 100))


routes = [
    Route("/health", health),
    Route("/articles", articles),
    Route("/articles/{article_id:int}", article),
    Route("/api/search", search),
    Route("/api/comments", comment, methods=["POST"]),
    Route("/login", login, methods=["POST"]),
    Route("/stats", Stats),
    WebSocketRoute("/ws/echo", echo),
    Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
]
if PLANTED:
    routes += [Route("/reports/digest", digest), Route("/reports/keywords", keywords),
               Route("/api/export", export)]

app = Starlette(routes=routes, middleware=[Middleware(RequestLog), Middleware(GZipMiddleware)])
