"""Each bottleneck really misbehaves, and its fixed twin answers exactly the same JSON.

Every test runs on both stacks (`stack`): SQLite, and PostgreSQL through asyncpg with Redis.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event

from sample_app.bottlenecks import EXPECTED_FLAGS, memory_leak
from sample_app.bottlenecks.threadpool import WAREHOUSE_CALL_SECONDS
from sample_app.settings import DEFAULT_THREAD_TOKENS
from tests.sample_app.inprocess import InProcessApp, Stack, serve


@pytest.fixture(scope="module")
def slow(stack: Stack) -> Iterator[InProcessApp]:
    with serve(fixed=False, stack=stack) as app:
        yield app


@pytest.fixture(scope="module")
def fixed(stack: Stack) -> Iterator[InProcessApp]:
    with serve(fixed=True, stack=stack) as app:
        yield app


SAME_ANSWERS = [
    "/reports/summary",
    "/search?q=steel%20kettle",
    "/search?q=Wireless%20Speaker&limit=50",
    "/search?q=zzzzqqq",
    "/orders/1",
    "/orders/42",
    "/orders/999999",
    "/catalog/export?offset=10&limit=40",
    "/catalog/export",
    "/items/11/summary",
    "/items/999999/summary",
    "/items/12/stock",
    "/items/13/forecast?days=12",
    "/items/13/forecast?days=0",
    "/items/14/quote",
    "/items/999999/quote",
]


@pytest.mark.parametrize("path", SAME_ANSWERS)
def test_fixed_twin_answers_the_same(slow: InProcessApp, fixed: InProcessApp, path: str) -> None:
    before, after = slow.get(path), fixed.get(path)
    assert before.status_code == after.status_code
    assert before.json() == after.json()
    if path.startswith("/search?q=steel"):
        assert before.json()["hits"], "the search should find something"


def test_same_route_templates_in_both_modes(slow: InProcessApp, fixed: InProcessApp) -> None:
    def routes(app: InProcessApp) -> set[str]:
        paths = app.app.openapi()["paths"]
        return {f"{method.upper()} {path}" for path, methods in paths.items() for method in methods}

    assert routes(slow) == routes(fixed)
    assert {flag["route"] for flag in EXPECTED_FLAGS} <= routes(slow)


def test_lru_cache_on_a_coroutine_fails_on_a_repeated_id(slow: InProcessApp,
                                                         fixed: InProcessApp) -> None:
    first, again, other = (slow.get(path) for path in
                           ("/items/21/summary", "/items/21/summary", "/items/22/summary"))
    assert (first.status_code, again.status_code, other.status_code) == (200, 500, 200)
    answers = [fixed.get("/items/21/summary") for _ in range(3)]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert all(answer.json() == first.json() for answer in answers)


def test_lru_cache_error_is_raised_at_the_listed_line(slow: InProcessApp) -> None:
    slow.get("/items/23/summary")
    with pytest.raises(RuntimeError, match="cannot reuse already awaited coroutine") as info:
        slow.get_raising("/items/23/summary")
    flag = next(flag for flag in EXPECTED_FLAGS if flag["kind"] == "error_rate")
    frames = [(frame.filename, frame.lineno) for frame in traceback.extract_tb(info.tb)]
    assert any(name.endswith(flag["file"]) and line == flag["line"] for name, line in frames)


@contextmanager
def counted_queries(app: InProcessApp) -> Iterator[list[str]]:
    engine = app.resources.sessions.kw["bind"].sync_engine
    statements: list[str] = []

    def record(*args: Any) -> None:
        statements.append(args[2])

    event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        event.remove(engine, "before_cursor_execute", record)


def test_order_lines_take_one_query_each_unless_fixed(slow: InProcessApp,
                                                      fixed: InProcessApp) -> None:
    lines = len(slow.get("/orders/5").json()["lines"])
    with counted_queries(slow) as slow_queries:
        slow.get("/orders/5")
    with counted_queries(fixed) as fixed_queries:
        fixed.get("/orders/5")
    assert lines >= 10
    assert len(slow_queries) >= lines + 2
    per_line = [sql for sql in slow_queries if "FROM items" in sql and "WHERE items.id" in sql]
    assert len(per_line) == lines and len(set(per_line)) == 1  # same statement, new parameters
    assert len(fixed_queries) <= 3


def test_exports_accumulate_unless_fixed(slow: InProcessApp, fixed: InProcessApp) -> None:
    before = len(memory_leak.EXPORT_LOG)
    for offset in range(40):
        slow.get(f"/catalog/export?offset={offset}&limit=200")
        fixed.get(f"/catalog/export?offset={offset}&limit=200")
    kept = memory_leak.EXPORT_LOG[before:]
    assert len(kept) == 40
    assert min(len(body) for body in kept) > 40_000  # tens of KB retained per request
    assert len(memory_leak.RECENT_EXPORTS) == memory_leak.RECENT_EXPORTS.maxlen


def test_sync_stock_check_is_limited_by_the_thread_pool(slow: InProcessApp) -> None:
    tokens = slow.resources.settings.thread_tokens
    assert tokens == DEFAULT_THREAD_TOKENS
    started = time.monotonic()
    answers = slow.gather([f"/items/{n}/stock" for n in range(1, 4 * tokens + 1)])
    elapsed = time.monotonic() - started
    assert [answer.status_code for answer in answers] == [200] * (4 * tokens)
    # 4 x tokens calls through `tokens` threads take four rounds at least.
    assert elapsed >= 4 * WAREHOUSE_CALL_SECONDS * 0.95


def test_fixed_search_index_sees_new_items(fixed: InProcessApp) -> None:
    created = fixed.post("/items/", json={"name": "zebrawood ukulele", "price_cents": 999})
    assert created.status_code == 201
    hits = fixed.get("/search", params={"q": "zebrawood ukulele"}).json()["hits"]
    assert hits[0]["item_id"] == created.json()["id"]
