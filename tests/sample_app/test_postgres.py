"""The sample app on its production stack: PostgreSQL through asyncpg, and Redis.

The API and bottleneck tests run there too (the `stack` fixture); these check what only this
stack has: the driver picked from a plain URL, the agent's query capture on asyncpg (per
request, at the line that issues the query), and the fixed twins' cache living in Redis.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from redis import Redis
from starlette.types import ASGIApp

from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.queries import QueryHooks, install_query_hooks, uninstall_query_hooks
from apiscope.agent.recorder import Recorder, RequestEntry
from sample_app.bottlenecks import EXPECTED_FLAGS
from sample_app.db import async_url
from tests.sample_app.inprocess import InProcessApp, Stack, serve
from tests.services import PostgresServer, RedisServer

N_PLUS_ONE = next(flag for flag in EXPECTED_FLAGS if flag["kind"] == "n_plus_one")


@pytest.mark.parametrize(("url", "expected"), [
    ("postgresql://u:p@db:5432/app", "postgresql+asyncpg://u:p@db:5432/app"),
    ("postgres://u:p@db/app", "postgresql+asyncpg://u:p@db/app"),
    ("postgresql+asyncpg://u:p@db/app", "postgresql+asyncpg://u:p@db/app"),
    ("sqlite+aiosqlite:////tmp/x.sqlite", "sqlite+aiosqlite:////tmp/x.sqlite"),
])
def test_plain_postgres_urls_get_the_async_driver(url: str, expected: str) -> None:
    assert async_url(url) == expected


@pytest.fixture(scope="module")
def on_postgres(postgres: PostgresServer, redis_service: RedisServer) -> Stack:
    return Stack("postgres", postgres, redis_service)


class Agent:
    """The in-process agent around the app, with the query hooks a server would get."""

    def __init__(self) -> None:
        self.recorder = Recorder()
        self.hooks: QueryHooks = install_query_hooks()

    def wrap(self, app: ASGIApp) -> ASGIApp:
        return AgentMiddleware(app, self.recorder, query_hooks=self.hooks)

    def requests(self, route: str) -> list[RequestEntry]:
        return [entry for entry in self.recorder.drain() if entry.route == route]


@pytest.fixture
def agent() -> Iterator[Agent]:
    try:
        yield Agent()
    finally:
        uninstall_query_hooks()


@pytest.mark.parametrize("fixed", [False, True], ids=["slow", "fixed"])
def test_asyncpg_queries_are_captured_per_request_at_their_call_site(
        on_postgres: Stack, agent: Agent, fixed: bool) -> None:
    with serve(fixed=fixed, stack=on_postgres, wrap=agent.wrap) as app:
        assert app.resources.sessions.kw["bind"].dialect.driver == "asyncpg"
        lines = [len(app.get(f"/orders/{order_id}").json()["lines"]) for order_id in (3, 4)]
    requests = agent.requests("/orders/{order_id}")
    assert len(requests) == 2
    for request, count in zip(requests, lines, strict=True):
        assert request.status == 200 and count >= 12
        repeated = [query for query in request.queries if query[1] > 1]
        if fixed:  # the order, then one joined query for its lines: nothing repeats
            assert repeated == [] and sum(query[1] for query in request.queries) <= 3
            continue
        # One statement per line, counted once (not again by asyncpg's own hook), at the line
        # in the handler's loop: what the n_plus_one rule reads.
        (statement, times, total_ms, file, line), = repeated
        assert statement.startswith("SELECT items.name FROM items WHERE items.id = ")
        assert times == count and total_ms > 0
        assert str(file).endswith(N_PLUS_ONE["file"]) and line == N_PLUS_ONE["line"]


def summary_keys(app: InProcessApp) -> dict[str, object]:
    url = app.resources.settings.redis_url
    assert url is not None
    with Redis.from_url(url) as client:
        return {key.decode(): json.loads(client.get(key) or b"null")
                for key in client.keys("sample-app:*")}


def test_the_fixed_twins_cache_lives_in_redis(on_postgres: Stack) -> None:
    with serve(fixed=True, stack=on_postgres) as app:
        summary = app.get("/items/21/summary").json()
        quote = app.get("/items/22/quote").json()
        assert summary_keys(app) == {"sample-app:item-summary:21": summary,
                                     "sample-app:quote:22": quote}
        assert [app.get("/items/21/summary").json() for _ in range(3)] == [summary] * 3
