"""Bottleneck 2, cpu_hotspot: a search that scans and scores every item in Python.

Each request loads every item and builds its trigram set in pure Python on the event loop:
the cost grows with the catalogue and the CPU time shows up on one line.
Fix: build a trigram index once (and extend it with new items), then score only the items
that share a trigram with the query. Results are identical.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated

from fastapi import APIRouter, Query
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from sample_app.db import Item
from sample_app.deps import ResourcesDep, SessionDep
from sample_app.schemas import SearchHit, SearchResults

Q = Annotated[str, Query(min_length=3, max_length=100)]
Limit = Annotated[int, Query(ge=1, le=50)]


def trigrams(text: str) -> set[str]:
    text = text.lower()
    return {text[i : i + 3] for i in range(len(text) - 2)}


def item_text(name: str, description: str) -> str:
    return f"{name} {description}".lower()


async def search_items(q: Q, session: SessionDep, limit: Limit = 10) -> SearchResults:
    query_grams = trigrams(q)
    rows = (await session.execute(select(Item.id, Item.name, Item.description))).all()
    scored: list[tuple[int, int, str]] = []
    for item_id, name, description in rows:
        text = item_text(name, description)
        grams = {text[i : i + 3] for i in range(len(text) - 2)}  # BOTTLENECK
        score = len(query_grams & grams)
        if score:
            scored.append((-score, item_id, name))
    return _results(q, heapq.nsmallest(limit, scored))


async def search_items_fixed(q: Q, session: SessionDep, resources: ResourcesDep,
                             limit: Limit = 10) -> SearchResults:
    index = resources.extras.get("search_index")
    if not isinstance(index, TrigramIndex):
        index = resources.extras["search_index"] = TrigramIndex()
    await index.refresh(session)
    return _results(q, index.search(trigrams(q), limit))


@dataclass
class TrigramIndex:
    """Trigram -> item ids; grows with new items (items are never updated or deleted)."""

    postings: dict[str, list[int]] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)
    last_id: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def refresh(self, session: AsyncSession) -> None:
        async with self.lock:
            statement = (select(Item.id, Item.name, Item.description)
                         .where(Item.id > self.last_id).order_by(Item.id))
            for item_id, name, description in (await session.execute(statement)).all():
                self.names[item_id] = name
                for gram in trigrams(item_text(name, description)):
                    self.postings.setdefault(gram, []).append(item_id)
                self.last_id = item_id

    def search(self, query_grams: set[str], limit: int) -> list[tuple[int, int, str]]:
        scores: Counter[int] = Counter()
        for gram in query_grams:
            scores.update(self.postings.get(gram, ()))
        ranked = ((-score, item_id, self.names[item_id]) for item_id, score in scores.items())
        return heapq.nsmallest(limit, ranked)


def _results(q: str, ranked: list[tuple[int, int, str]]) -> SearchResults:
    hits = [SearchHit(item_id=item_id, name=name, score=-neg) for neg, item_id, name in ranked]
    return SearchResults(query=q, hits=hits)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    router.add_api_route("/search", search_items_fixed if fixed else search_items, methods=["GET"])
    return router
