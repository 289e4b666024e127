"""Small pieces the agent tests share: a settable clock and an in-process HTTP client."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import httpx

from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.recorder import Recorder, RequestEntry
from tests.support import FakeClock


def get_all(app: Any, paths: Sequence[str], method: str = "GET",
            raise_app_exceptions: bool = True) -> list[httpx.Response]:
    """Send each request in turn to an ASGI app in-process."""
    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=raise_app_exceptions)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return [await client.request(method, p) for p in paths]

    return asyncio.run(main())


def record_requests(app: Any, paths: Sequence[str], *, method: str = "GET",
                    clock: FakeClock | None = None, recorder: Recorder | None = None,
                    ) -> list[RequestEntry]:
    """Wrap `app` with a fresh AgentMiddleware, send the requests, return what it recorded."""
    recorder = recorder or Recorder()
    kwargs: dict[str, Any] = {"clock": clock, "wall_clock": lambda: 0.0} if clock else {}
    wrapped = AgentMiddleware(app, recorder, **kwargs)
    get_all(wrapped, paths, method)
    return recorder.drain()
