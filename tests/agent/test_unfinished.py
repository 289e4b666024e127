"""The agent's list of requests still running with no response begun (`inflight.unfinished`),
asked from another thread as the collector's socket thread asks it, on an app whose pool of
two connections deadlocks (`tests.integration.hang_app`)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from asgiref.sync import sync_to_async

from apiscope.agent.runtime import Agent
from tests.integration.hang_app import create_app


async def _requests_then_ask(agent: Agent, questions: list[dict[str, Any]]) -> list[Any]:
    app = agent.middleware(create_app())
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                 timeout=120) as client:
        await client.get("/items/1")  # a first request: the agent meets the loop
        tasks = [asyncio.create_task(client.get(path))
                 for path in ("/report", "/report", "/items/2", "/items/3", "/poll", "/stream")]
        await asyncio.sleep(1.2)
        answers = []
        for question in questions:
            try:
                answers.append(await asyncio.to_thread(agent.respond, question))
            except ValueError as exc:
                answers.append(exc)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    return answers


def test_hung_requests_are_listed_with_where_they_wait(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    hung, young, wrong = asyncio.run(_requests_then_ask(agent, [
        {"op": "unfinished", "older_than": 1.0}, {"op": "unfinished", "older_than": 30},
        {"op": "unfinished", "older_than": "soon"}]))
    rows = hung["requests"]
    # Both reports hold a connection each and wait for a third; the items wait for one; the
    # long poll waits by design (the analysis judges it); the stream has begun: not listed.
    assert sorted(r["route"] for r in rows) == [
        "/items/{item_id}", "/items/{item_id}", "/poll", "/report", "/report"]
    assert all(r["elapsed_s"] >= 1.0 and r["method"] == "GET" and "path" not in r
               for r in rows)
    assert [r["elapsed_s"] for r in rows] == sorted((r["elapsed_s"] for r in rows),
                                                    reverse=True)
    for row in rows:
        functions = [f["function"] for f in row["await_chain"]]
        assert row["awaiting"] == "Future (pending)", row
        if row["route"] == "/items/{item_id}":
            # Through the task BaseHTTPMiddleware runs the app in, and into the dependency's
            # async generator (entered by FastAPI through an asynccontextmanager).
            assert functions[-3:] == ["create_app.<locals>.connection",
                                      "_ContextManagerMixin.__aenter__", "Semaphore.acquire"]
        elif row["route"] == "/report":
            assert functions[-3:] == ["create_app.<locals>.report",
                                      "_ContextManagerMixin.__aenter__", "Semaphore.acquire"]
    assert young == {"pid": hung["pid"], "requests": []}
    assert isinstance(wrong, ValueError) and "older_than" in str(wrong)


def _hands_to_a_thread(how: str, gate: threading.Event) -> Any:
    def blocking() -> None:
        gate.wait(30)  # LINE: the sync call that never returns

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if how == "to_thread":
            await asyncio.to_thread(blocking)
        else:  # Django's sync views: run_in_executor's future, under asyncio.shield
            await sync_to_async(blocking)()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


@pytest.mark.parametrize("how", ["to_thread", "sync_to_async"])
def test_a_request_waiting_on_an_executors_thread_names_the_thread(how: str,
                                                                   sock_dir: str) -> None:
    # The loop awaits an asyncio future chained to a concurrent.futures one (and, for
    # asgiref, shielded): the pool thread holding that one is the request's thread.
    agent, gate = Agent(sock_dir), threading.Event()

    async def main() -> dict[str, Any]:
        transport = httpx.ASGITransport(app=agent.middleware(_hands_to_a_thread(how, gate)))
        async with httpx.AsyncClient(transport=transport, base_url="http://test",
                                     timeout=60) as client:
            task = asyncio.create_task(client.get("/sync"))
            await asyncio.sleep(1.2)
            answer = await asyncio.to_thread(agent.respond,
                                             {"op": "unfinished", "older_than": 1.0})
            gate.set()
            await task
        return answer

    [row] = asyncio.run(main())["requests"]
    line = next(i for i, text in enumerate(Path(__file__).read_text().splitlines(), 1)
                if "LINE: the sync call" in text)
    assert {"function": "_hands_to_a_thread.<locals>.blocking", "file": __file__,
            "line": line} in row["thread_stack"], row["thread_stack"]
