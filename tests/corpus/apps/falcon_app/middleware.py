"""Lifespan (the engine) and the per-request context (request id, timing, DB session)."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from falcon.asgi import Request, Response

from .config import Settings
from .db import Database

log = logging.getLogger("falcon_app.access")
SLOW_MS = 500.0


class ServiceMiddleware:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings

    async def process_startup(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        self.db.connect(self.settings)
        log.info("engine started (pool_size=%d)", self.settings.pool_size)

    async def process_shutdown(self, scope: dict[str, Any], event: dict[str, Any]) -> None:
        await self.db.dispose()

    async def process_request(self, req: Request, resp: Response) -> None:
        rid = req.get_header("X-Request-ID")
        req.context.request_id = rid if rid and len(rid) <= 64 else uuid.uuid4().hex
        req.context.started = time.perf_counter()
        req.context.db = self.db.session()  # lazy: no connection until the first query

    async def process_response(self, req: Request, resp: Response, resource: object,
                               req_succeeded: bool) -> None:
        session = getattr(req.context, "db", None)
        if session is not None:
            await session.close()
        started = getattr(req.context, "started", None)
        if started is None:
            return
        elapsed_ms = (time.perf_counter() - started) * 1000.0
        resp.set_header("X-Request-ID", req.context.request_id)
        resp.set_header("Server-Timing", f"app;dur={elapsed_ms:.1f}")
        if elapsed_ms > SLOW_MS:
            log.warning("slow request %s %s %.0f ms rid=%s", req.method, req.path, elapsed_ms,
                        req.context.request_id)
