"""Serve the sample app in-process, lifespan included, behind a synchronous httpx-style API.

`Stack` says where the app keeps its data: SQLite and the in-process cache, or real PostgreSQL
(asyncpg) and Redis servers; each app on PostgreSQL gets a database of its own, and a Redis
database emptied for it, so apps never see each other's rows or cache entries.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.from_thread
import httpx
from fastapi import FastAPI
from redis import Redis
from starlette.types import ASGIApp, Receive, Scope, Send

from sample_app.deps import Resources
from sample_app.main import create_app
from sample_app.settings import Settings
from tests.services import PostgresServer, RedisServer

TEST_ITEMS = 500  # small, so each app seeds in a fraction of a second
REDIS_DATABASES = 16  # redis-server's default
_app_numbers = itertools.count(1)


@dataclass(frozen=True)
class Stack:
    """SQLite and the in-process cache (no servers), or PostgreSQL and Redis."""

    name: str
    postgres: PostgresServer | None = None
    redis: RedisServer | None = None

    def settings(self, fixed: bool, items: int, seed: int) -> Settings:
        if self.postgres is None or self.redis is None:
            return Settings(fixed=fixed, items=items, seed=seed)
        number = next(_app_numbers)
        # A plain postgresql:// URL, as platforms hand them out: the app picks asyncpg itself.
        database_url = self.postgres.create_database(f"sample_{number}")
        redis_url = f"redis://127.0.0.1:{self.redis.port}/{number % REDIS_DATABASES}"
        with Redis.from_url(redis_url) as client:
            client.flushdb()
        return Settings(fixed=fixed, items=items, seed=seed, database_url=database_url,
                        redis_url=redis_url)


SQLITE = Stack("sqlite")


@dataclass
class InProcessApp:
    """Requests go through the real ASGI app; its lifespan has run and will run its shutdown."""

    app: FastAPI
    resources: Resources
    portal: anyio.from_thread.BlockingPortal
    client: httpx.AsyncClient  # answers 500 for unhandled errors, as a server would
    raising: httpx.AsyncClient  # lets unhandled errors propagate, tracebacks included

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(partial(self.client.get, path, **kwargs))

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.portal.call(partial(self.client.post, path, **kwargs))

    def get_raising(self, path: str) -> httpx.Response:
        return self.portal.call(partial(self.raising.get, path))

    def gather(self, paths: list[str]) -> list[httpx.Response]:
        """GET all `paths` concurrently."""
        async def all_of() -> list[httpx.Response]:
            responses: list[httpx.Response] = []

            async def one(path: str) -> None:
                responses.append(await self.client.get(path))

            async with anyio.create_task_group() as group:
                for path in paths:
                    group.start_soon(one, path)
            return responses

        return self.portal.call(all_of)


Wrapper = Callable[[ASGIApp], ASGIApp]


@contextmanager
def serve(fixed: bool = False, items: int = TEST_ITEMS, seed: int = 42, stack: Stack = SQLITE,
          wrap: Wrapper | None = None) -> Iterator[InProcessApp]:
    """The app on `stack`; `wrap` puts middleware around it as a server would (e.g. the agent)."""
    app = create_app(stack.settings(fixed, items, seed))
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(_clients(app, wrap)) as (resources, client,
                                                                        raising):
        yield InProcessApp(app, resources, portal, client, raising)


@asynccontextmanager
async def _clients(app: FastAPI, wrap: Wrapper | None) -> AsyncIterator[
        tuple[Resources, httpx.AsyncClient, httpx.AsyncClient]]:
    async with app.router.lifespan_context(app) as state:
        assert state is not None

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state)  # what uvicorn does with the lifespan's state
            await app(scope, receive, send)

        served = wrap(with_state) if wrap else with_state
        quiet = httpx.ASGITransport(app=served, raise_app_exceptions=False)
        loud = httpx.ASGITransport(app=served, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=quiet, base_url="http://sample") as client, \
                httpx.AsyncClient(transport=loud, base_url="http://sample") as raising:
            yield state["resources"], client, raising
