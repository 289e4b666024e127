"""Bottleneck 4, memory_growth: every export is kept in a module-level list, forever.

The list is meant as an audit trail of recent exports, but nothing ever trims it: each
request adds its whole rendered page (about 60 KB at the default 250 rows), so a
worker's memory grows steadily under load until it is killed.
Fix: a bounded structure (`deque(maxlen=...)`) that keeps only the recent exports.
"""

from __future__ import annotations

import json
from collections import deque
from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sample_app.db import Item
from sample_app.deps import SessionDep

Offset = Annotated[int, Query(ge=0, le=1_000_000)]
Limit = Annotated[int, Query(ge=1, le=500)]

EXPORT_LOG: list[bytes] = []  # unbounded: the bug
RECENT_EXPORTS: deque[bytes] = deque(maxlen=8)  # bounded: the fix


async def _page(session: AsyncSession, offset: int, limit: int) -> list[dict[str, object]]:
    statement = (select(Item.id, Item.name, Item.description, Item.price_cents)
                 .order_by(Item.id).offset(offset).limit(limit))
    return [row._asdict() for row in (await session.execute(statement)).all()]


async def export_catalog(session: SessionDep, offset: Offset = 0,
                         limit: Limit = 250) -> Response:
    page = await _page(session, offset, limit)
    # Rendering and keeping share one line, so the allocation site is the retention site.
    EXPORT_LOG.append(body := json.dumps(page).encode())  # BOTTLENECK
    return Response(body, media_type="application/json")


async def export_catalog_fixed(session: SessionDep, offset: Offset = 0,
                               limit: Limit = 250) -> Response:
    page = await _page(session, offset, limit)
    RECENT_EXPORTS.append(body := json.dumps(page).encode())
    return Response(body, media_type="application/json")


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = export_catalog_fixed if fixed else export_catalog
    router.add_api_route("/catalog/export", handler, methods=["GET"])
    return router
