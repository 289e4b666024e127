"""The API's pydantic models: what clients send is kept apart from what they read back."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from sample_app.db import Item

TagName = Annotated[
    str, StringConstraints(strip_whitespace=True, to_lower=True, min_length=1, max_length=30,
                           pattern=r"^[A-Za-z0-9-]+$")
]


class ItemCreate(BaseModel):
    """A new item: no id, the database assigns it."""

    model_config = ConfigDict(extra="forbid")

    name: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)]
    description: Annotated[str, Field(max_length=2000)] = ""
    price_cents: Annotated[int, Field(gt=0, le=100_000_000)]
    tags: Annotated[list[TagName], Field(max_length=10)] = []


class ItemRead(BaseModel):
    id: int
    name: str
    description: str
    price_cents: int
    tags: list[str]

    @classmethod
    def from_item(cls, item: Item) -> ItemRead:
        return cls(id=item.id, name=item.name, description=item.description,
                   price_cents=item.price_cents, tags=sorted(tag.name for tag in item.tags))


class ItemPage(BaseModel):
    items: list[ItemRead]
    total: int
    limit: int
    offset: int


class ItemSnapshot(BaseModel):
    """The few fields of an item that the slower endpoints need, loaded in a short session."""

    model_config = ConfigDict(frozen=True)

    id: int
    name: str
    price_cents: int


class Health(BaseModel):
    status: str
    fixed: bool
    seeded_items: int
    seeded_orders: int


class OrderLineRead(BaseModel):
    item_id: int
    item_name: str
    quantity: int
    unit_price_cents: int


class OrderRead(BaseModel):
    id: int
    customer: str
    placed_at: datetime
    lines: list[OrderLineRead]
    total_cents: int


class ReportSummary(BaseModel):
    items: int
    orders: int
    order_lines: int
    revenue_cents: int


class SearchHit(BaseModel):
    item_id: int
    name: str
    score: int


class SearchResults(BaseModel):
    query: str
    hits: list[SearchHit]


class ItemSummary(BaseModel):
    item_id: int
    name: str
    price_cents: int
    times_ordered: int
    units_sold: int


class StockLevel(BaseModel):
    item_id: int
    warehouse: str
    on_hand: int


class Forecast(BaseModel):
    model_config = ConfigDict(frozen=True)

    item_id: int
    days: int
    expected_price_cents: int
    p5_price_cents: int
    p95_price_cents: int


class SupplierQuote(BaseModel):
    item_id: int
    supplier: str
    unit_cost_cents: int
    lead_time_days: int
