"""Bottleneck 1, event_loop_blocked: a blocking call inside an `async def` handler.

`time.sleep` stands for any synchronous client called from async code (`requests.get`, a sync
database driver, a large `open().read()`). While it runs the event loop runs nothing else, so
every request on this worker waits, however cheap it is.
Fix: await an async equivalent (here `asyncio.sleep`), or move the call to a thread.
"""

from __future__ import annotations

import asyncio
import time

from fastapi import APIRouter
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncSession

from sample_app.db import Item, Order, OrderLine
from sample_app.deps import SessionDep
from sample_app.schemas import ReportSummary

AUDIT_CALL_SECONDS = 0.035  # a synchronous call to an audit service


async def report_summary(session: SessionDep) -> ReportSummary:
    summary = await _summary(session)
    time.sleep(AUDIT_CALL_SECONDS)  # BOTTLENECK
    return summary


async def report_summary_fixed(session: SessionDep) -> ReportSummary:
    summary = await _summary(session)
    await asyncio.sleep(AUDIT_CALL_SECONDS)  # the loop serves other requests meanwhile
    return summary


async def _summary(session: AsyncSession) -> ReportSummary:
    totals = select(func.count(), func.coalesce(func.sum(OrderLine.quantity
                                                          * OrderLine.unit_price_cents), 0))
    lines, revenue = (await session.execute(totals)).one()
    items = await session.scalar(select(func.count()).select_from(Item))
    orders = await session.scalar(select(func.count()).select_from(Order))
    return ReportSummary(items=items or 0, orders=orders or 0, order_lines=lines,
                         revenue_cents=revenue)


def build_router(fixed: bool) -> APIRouter:
    router = APIRouter(tags=["bottlenecks"])
    handler = report_summary_fixed if fixed else report_summary
    router.add_api_route("/reports/summary", handler, methods=["GET"])
    return router
