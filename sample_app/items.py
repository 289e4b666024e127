"""The healthy part of the API: item CRUD with pagination, and the health check."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Query
from sqlalchemy import func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import selectinload

from sample_app.db import Item, Tag
from sample_app.deps import ResourcesDep, SessionDep
from sample_app.schemas import Health, ItemCreate, ItemPage, ItemRead

MAX_PAGE = 100
MAX_OFFSET = 1_000_000

router = APIRouter()


@router.get("/health")
async def health(resources: ResourcesDep) -> Health:
    return Health(status="ok", fixed=resources.settings.fixed,
                  seeded_items=resources.seeded.items, seeded_orders=resources.seeded.orders)


@router.get("/items/")
async def list_items(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=MAX_PAGE)] = 20,
    offset: Annotated[int, Query(ge=0, le=MAX_OFFSET)] = 0,
) -> ItemPage:
    total = await session.scalar(select(func.count()).select_from(Item))
    statement = (select(Item).options(selectinload(Item.tags)).order_by(Item.id)
                 .limit(limit).offset(offset))
    items = (await session.scalars(statement)).all()
    return ItemPage(items=[ItemRead.from_item(item) for item in items], total=total or 0,
                    limit=limit, offset=offset)


@router.post("/items/", status_code=201)
async def create_item(body: ItemCreate, session: SessionDep) -> ItemRead:
    item = Item(name=body.name, description=body.description, price_cents=body.price_cents)
    item.tags = await _tags(session, body.tags)
    session.add(item)
    try:
        await session.commit()
    except IntegrityError:
        # Two requests created the same new tag at once: the client can simply retry.
        await session.rollback()
        raise HTTPException(status_code=409, detail="conflicting tag creation, retry") from None
    return ItemRead.from_item(item)


@router.get("/items/{item_id}")
async def read_item(item_id: int, session: SessionDep) -> ItemRead:
    statement = select(Item).options(selectinload(Item.tags)).where(Item.id == item_id)
    item = await session.scalar(statement)
    if item is None:
        raise HTTPException(status_code=404, detail=f"item {item_id} not found")
    return ItemRead.from_item(item)


async def _tags(session: AsyncSession, names: list[str]) -> list[Tag]:
    wanted = sorted(set(names))
    if not wanted:
        return []
    existing = {tag.name: tag for tag in await session.scalars(
        select(Tag).where(Tag.name.in_(wanted)))}
    return [existing.get(name) or Tag(name=name) for name in wanted]
