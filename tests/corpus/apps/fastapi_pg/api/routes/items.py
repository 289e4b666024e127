from __future__ import annotations

import json

import redis
import redis.asyncio as aioredis
from fastapi import APIRouter, HTTPException
from sqlmodel import func, select

from ...core.config import settings
from ...models import Item, ItemCreate, ItemPublic, ItemsPublic, Message
from ..deps import CurrentUser, SessionDep

router = APIRouter(prefix="/items", tags=["items"])
# A read-through cache for single items, shared by the workers; and an async client for the
# async stats route.
cache = redis.Redis.from_url(settings.REDIS_URL) if settings.REDIS_URL else None
async_cache = aioredis.Redis.from_url(settings.REDIS_URL) if settings.REDIS_URL else None
CACHE_SECONDS = 30


@router.get("/", response_model=ItemsPublic)
def read_items(session: SessionDep, current_user: CurrentUser, skip: int = 0,
               limit: int = 20) -> ItemsPublic:
    query = select(Item)
    count_query = select(func.count()).select_from(Item)
    if not current_user.is_superuser:
        query = query.where(Item.owner_id == current_user.id)
        count_query = count_query.where(Item.owner_id == current_user.id)
    count = session.exec(count_query).one()
    items = session.exec(query.order_by(Item.id).offset(skip).limit(limit)).all()
    return ItemsPublic(data=[ItemPublic.model_validate(i) for i in items], count=count)


@router.get("/stats")
async def item_stats() -> dict[str, int]:
    if async_cache is None:
        return {"created": 0, "cache_hits": 0}
    created, hits = await async_cache.mget("items:created", "items:cache_hits")
    return {"created": int(created or 0), "cache_hits": int(hits or 0)}


@router.get("/{item_id}", response_model=ItemPublic)
def read_item(session: SessionDep, current_user: CurrentUser, item_id: int) -> ItemPublic:
    key = f"items:{item_id}"
    if cache is not None and (cached := cache.get(key)) is not None:
        cache.incr("items:cache_hits")
        return ItemPublic.model_validate(json.loads(cached))
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(status_code=404, detail="Item not found")
    public = ItemPublic.model_validate(item)
    if cache is not None:
        cache.set(key, public.model_dump_json(), ex=CACHE_SECONDS)
    return public


@router.post("/", response_model=ItemPublic, status_code=201)
def create_item(session: SessionDep, current_user: CurrentUser, item_in: ItemCreate) -> Item:
    item = Item.model_validate(item_in, update={"owner_id": current_user.id})
    session.add(item)
    session.commit()
    session.refresh(item)
    if cache is not None:
        cache.incr("items:created")
    return item


@router.delete("/{item_id}")
def delete_item(session: SessionDep, current_user: CurrentUser, item_id: int) -> Message:
    item = session.get(Item, item_id)
    if item is None:
        raise HTTPException(status_code=404, detail="Item not found")
    if not current_user.is_superuser and item.owner_id != current_user.id:
        raise HTTPException(status_code=400, detail="Not enough permissions")
    session.delete(item)
    session.commit()
    if cache is not None:
        cache.delete(f"items:{item_id}")
    return Message(message="Item deleted successfully")
