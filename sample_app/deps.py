"""What handlers get injected: the app's resources, a session, a short-lived item lookup.

Every dependency here is `async def` on purpose: FastAPI runs a plain `def` dependency in the
thread pool, so even a trivial one would queue behind a saturated pool.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, HTTPException, Request
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from sample_app.cache import AsyncCache
from sample_app.db import Item
from sample_app.schemas import ItemSnapshot
from sample_app.seed import SeedCounts
from sample_app.settings import Settings


@dataclass
class Resources:
    """What the lifespan builds and every request shares (no module-level globals)."""

    settings: Settings
    sessions: async_sessionmaker[AsyncSession]
    cache: AsyncCache
    seeded: SeedCounts
    extras: dict[str, Any]  # per-feature state, e.g. the fixed search index


async def get_resources(request: Request) -> Resources:
    resources: Resources = request.state.resources
    return resources


ResourcesDep = Annotated[Resources, Depends(get_resources)]


async def get_session(resources: ResourcesDep) -> AsyncIterator[AsyncSession]:
    async with resources.sessions() as session:
        yield session


SessionDep = Annotated[AsyncSession, Depends(get_session)]


async def get_item_snapshot(item_id: int, resources: ResourcesDep) -> ItemSnapshot:
    """Load the item in its own short session, so a slow handler holds no pooled connection."""
    statement = select(Item.id, Item.name, Item.price_cents).where(Item.id == item_id)
    async with resources.sessions() as session:
        row = (await session.execute(statement)).first()
    if row is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return ItemSnapshot(id=row.id, name=row.name, price_cents=row.price_cents)


ItemSnapshotDep = Annotated[ItemSnapshot, Depends(get_item_snapshot)]
