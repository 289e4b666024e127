"""Serve the sample app in-process, lifespan included, behind a synchronous httpx-style API."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio.from_thread
import httpx
from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from sample_app.deps import Resources
from sample_app.main import create_app
from sample_app.settings import Settings

TEST_ITEMS = 500  # small, so each app seeds in a fraction of a second


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


@contextmanager
def serve(fixed: bool = False, items: int = TEST_ITEMS, seed: int = 42) -> Iterator[InProcessApp]:
    app = create_app(Settings(fixed=fixed, items=items, seed=seed))
    with anyio.from_thread.start_blocking_portal() as portal, \
            portal.wrap_async_context_manager(_clients(app)) as (resources, client, raising):
        yield InProcessApp(app, resources, portal, client, raising)


@asynccontextmanager
async def _clients(app: FastAPI) -> AsyncIterator[tuple[Resources, httpx.AsyncClient,
                                                        httpx.AsyncClient]]:
    async with app.router.lifespan_context(app) as state:
        assert state is not None

        async def with_state(scope: Scope, receive: Receive, send: Send) -> None:
            scope["state"] = dict(state)  # what uvicorn does with the lifespan's state
            await app(scope, receive, send)

        quiet = httpx.ASGITransport(app=with_state, raise_app_exceptions=False)
        loud = httpx.ASGITransport(app=with_state, raise_app_exceptions=True)
        async with httpx.AsyncClient(transport=quiet, base_url="http://sample") as client, \
                httpx.AsyncClient(transport=loud, base_url="http://sample") as raising:
            yield state["resources"], client, raising
