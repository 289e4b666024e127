"""Helpers shared by the resources: paging, the order summary, JSON for the ETag."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from falcon.asgi import Request

from ..config import settings
from ..models import Order


def json_default(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(obj: object) -> str:
    return json.dumps(obj, default=json_default, separators=(",", ":"))


def page(req: Request, default: int = 50) -> tuple[int, int]:
    limit = req.get_param_as_int("limit", default=default, min_value=1,
                                 max_value=settings.page_max)
    offset = req.get_param_as_int("offset", default=0, min_value=0)
    return limit, offset


def order_summary(order: Order, customer_name: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"id": order.id, "customer_id": order.customer_id,
                           "status": order.status, "currency": order.currency,
                           "total_cents": order.total_cents, "created_at": order.created_at}
    if customer_name is not None:
        out["customer_name"] = customer_name
    return out
