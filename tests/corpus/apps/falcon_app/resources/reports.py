"""/reports/revenue (an async SQL aggregate), /reports/legacy (sync psycopg in the thread
pool)."""

from __future__ import annotations

import asyncio
import functools

from falcon.asgi import Request, Response
from sqlalchemy import func, select

from .. import legacy
from ..models import Customer, Order


class RevenueReportResource:
    async def on_get(self, req: Request, resp: Response) -> None:
        days = req.get_param_as_int("days", default=30, min_value=1, max_value=365)
        week = func.date_trunc("week", Order.created_at).label("week")
        stmt = (select(week, Customer.country, func.count(Order.id).label("orders"),
                       func.sum(Order.total_cents).label("revenue_cents"))
                .join(Customer, Customer.id == Order.customer_id)
                .where(Order.created_at >= func.now() - func.make_interval(0, 0, 0, days),
                       Order.status.not_in(("cancelled", "refunded")))
                .group_by(week, Customer.country)
                .order_by(week, Customer.country))
        rows = (await req.context.db.execute(stmt)).all()
        resp.media = {"days": days, "total_cents": sum(int(r.revenue_cents) for r in rows),
                      "rows": [{"week": r.week.date().isoformat(), "country": r.country,
                                "orders": r.orders, "revenue_cents": int(r.revenue_cents)}
                               for r in rows]}


class LegacyReportResource:
    async def on_get(self, req: Request, resp: Response) -> None:
        days = req.get_param_as_int("days", default=90, min_value=1, max_value=365)
        loop = asyncio.get_running_loop()
        rows = await loop.run_in_executor(None, functools.partial(legacy.revenue_by_status, days))
        resp.media = {"days": days, "source": "legacy", "rows": rows}
