"""Request bodies (validated by the `validate_body` hook)."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator


class OrderLineIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product_id: int = Field(gt=0)
    quantity: int = Field(gt=0, le=100)


class OrderIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    customer_id: int = Field(gt=0)
    currency: str = Field(default="EUR", pattern=r"^[A-Z]{3}$")
    note: str | None = Field(default=None, max_length=200)
    lines: list[OrderLineIn] = Field(min_length=1, max_length=50)

    @field_validator("lines")
    @classmethod
    def distinct_products(cls, lines: list[OrderLineIn]) -> list[OrderLineIn]:
        merged: dict[int, int] = {}
        for line in lines:
            merged[line.product_id] = merged.get(line.product_id, 0) + line.quantity
        return [OrderLineIn(product_id=p, quantity=min(q, 100)) for p, q in merged.items()]
