"""The deliberate bottlenecks: one module each, the slow handler and its fixed twin side by side.

`EXPECTED_FLAGS` is what apiscope must report against this app under the bundled load: one
entry per bottleneck with the flag kind, the route, the file:line of the offending call
(paths relative to the repository root) and the line where the route's handler is defined.
The test suite parses the sources to check that each listed line really holds that call, so
the list cannot drift from the code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypedDict

from fastapi import APIRouter

from sample_app.bottlenecks import (
    blocking,
    cpu_search,
    gil,
    lru_cache_coroutine,
    memory_leak,
    n_plus_one,
    slow_await,
    threadpool,
)

ROUTER_BUILDERS: tuple[Callable[[bool], APIRouter], ...] = (
    blocking.build_router,
    cpu_search.build_router,
    n_plus_one.build_router,
    memory_leak.build_router,
    lru_cache_coroutine.build_router,
    threadpool.build_router,
    gil.build_router,
    slow_await.build_router,
)


class ExpectedFlag(TypedDict):
    kind: str  # the apiscope flag kind
    route: str  # METHOD TEMPLATE
    file: str  # relative to the repository root
    line: int  # the offending call, as a stack sample reports it
    function: str  # the function holding that line
    call: str  # the offending call (a dotted name), for humans and the drift test
    handler: str  # module:function of the slow route handler
    # Where the handler is defined: what a flag whose location is "the handler" (per the
    # contract: threadpool_saturation, slow_endpoint; and memory_growth, see
    # `LOCATED_AT_HANDLER`) reports, rather than the call above.
    handler_line: int


# Flags that point at the route's handler rather than at the offending call. memory_growth is
# one: RSS and per-route request counts show *which route* keeps memory, but not which line
# allocates it (that takes an allocation tracer, tracemalloc or memray, which apiscope does not
# run in the target); so apiscope names the route and points at its handler as where to start.
LOCATED_AT_HANDLER = frozenset({"threadpool_saturation", "memory_growth"})


# Flags a short run (the 25 s demo) raises without a route. memory_growth names the route only
# when RSS increments track that route's request counts over 40 resource samples or more: over
# the ~18 of a 25 s run, some other route correlates by chance as strongly as the leaking one.
SHORT_RUN_UNATTRIBUTED = frozenset({"memory_growth"})


def reported_line(flag: ExpectedFlag) -> int:
    """The line apiscope's flag for this bottleneck reports."""
    return flag["handler_line"] if flag["kind"] in LOCATED_AT_HANDLER else flag["line"]


EXPECTED_FLAGS: tuple[ExpectedFlag, ...] = (
    {"kind": "event_loop_blocked", "route": "GET /reports/summary",
     "file": "sample_app/bottlenecks/blocking.py", "line": 27,
     "function": "report_summary", "call": "time.sleep",
     "handler": "sample_app.bottlenecks.blocking:report_summary", "handler_line": 25},
    {"kind": "cpu_hotspot", "route": "GET /search",
     "file": "sample_app/bottlenecks/cpu_search.py", "line": 44,
     "function": "search_items", "call": "range",
     "handler": "sample_app.bottlenecks.cpu_search:search_items", "handler_line": 38},
    {"kind": "n_plus_one", "route": "GET /orders/{order_id}",
     "file": "sample_app/bottlenecks/n_plus_one.py", "line": 26,
     "function": "read_order", "call": "session.scalar",
     "handler": "sample_app.bottlenecks.n_plus_one:read_order", "handler_line": 19},
    {"kind": "memory_growth", "route": "GET /catalog/export",
     "file": "sample_app/bottlenecks/memory_leak.py", "line": 40,
     "function": "export_catalog", "call": "EXPORT_LOG.append",
     "handler": "sample_app.bottlenecks.memory_leak:export_catalog", "handler_line": 36},
    {"kind": "error_rate", "route": "GET /items/{item_id}/summary",
     "file": "sample_app/bottlenecks/lru_cache_coroutine.py", "line": 47,
     "function": "item_summary", "call": "fetch_item_summary",
     "handler": "sample_app.bottlenecks.lru_cache_coroutine:item_summary", "handler_line": 46},
    {"kind": "threadpool_saturation", "route": "GET /items/{item_id}/stock",
     "file": "sample_app/bottlenecks/threadpool.py", "line": 26,
     "function": "check_stock", "call": "time.sleep",
     "handler": "sample_app.bottlenecks.threadpool:check_stock", "handler_line": 25},
    {"kind": "gil_contention", "route": "GET /items/{item_id}/forecast",
     "file": "sample_app/bottlenecks/gil.py", "line": 33,
     "function": "simulate_prices", "call": "rng.random",
     "handler": "sample_app.bottlenecks.gil:forecast_price", "handler_line": 45},
    {"kind": "slow_await", "route": "GET /items/{item_id}/quote",
     "file": "sample_app/bottlenecks/slow_await.py", "line": 24,
     "function": "fetch_supplier_quote", "call": "asyncio.sleep",
     "handler": "sample_app.bottlenecks.slow_await:supplier_quote", "handler_line": 29},
)
