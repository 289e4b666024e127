"""`dump` lists a request running right now, the loop blocked in its handler (its awaits are
live on the loop thread's stack then, not in its coroutine's `cr_await`): at the line it
runs, on asyncio and on trio (hypercorn's trio worker), beside a request suspended in an
await. Asked from another thread, as the agent's socket thread answers it."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest

from apiscope.agent.runtime import Agent


def _line(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker))


def _app(gate: threading.Event) -> Any:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/block":
            gate.wait(10)  # BLOCK_LINE: holds the loop
        else:
            await anyio.sleep(10)  # AWAIT_LINE
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    return app


def _dump_while_blocked(agent: Agent, gate: threading.Event, answers: list[Any]) -> None:
    """Dump once both requests are in flight and the blocking one runs (on a loaded host the
    loop may take a while to get there), then let it go."""
    try:
        deadline = time.monotonic() + 10
        while True:
            state = agent.respond({"op": "dump"})
            rows = {r["path"]: r for r in state.get("requests", [])}
            if (set(rows) == {"/block", "/wait"} and rows["/block"]["running"]) \
                    or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        time.sleep(0.1)  # the loop is in gate.wait by then, deep in its stack
        answers.append(agent.respond({"op": "dump"}))
    finally:
        gate.set()


async def _serve(agent: Agent, gate: threading.Event, answers: list[Any]) -> None:
    app = agent.middleware(_app(gate))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test", timeout=30) as client:
        async with anyio.create_task_group() as group:
            group.start_soon(client.get, "/wait")
            await anyio.sleep(0.1)
            threading.Thread(target=_dump_while_blocked, args=(agent, gate, answers)).start()
            await client.get("/block")
            group.cancel_scope.cancel()


@pytest.mark.parametrize("backend", ["asyncio", "trio"])
def test_a_request_holding_the_loop_is_listed_at_its_line(sock_dir: str, backend: str) -> None:
    if backend == "trio":
        pytest.importorskip("trio")
    agent = Agent(sock_dir)
    gate, answers = threading.Event(), []
    anyio.run(_serve, agent, gate, answers, backend=backend)
    [state] = answers
    rows = {r["path"]: r for r in state["requests"]}
    assert set(rows) == {"/block", "/wait"}, rows
    block, wait = rows["/block"], rows["/wait"]
    assert block["running"] is True and block["elapsed_s"] is not None
    assert block["thread"] == threading.main_thread().ident
    # Down to the call it is blocked in: the handler's line, then threading's wait.
    chain = [(f["function"], f["line"]) for f in block["await_chain"]]
    at = chain.index(("_app.<locals>.app", _line("# BLOCK_LINE: holds the loop")))
    assert [function for function, _ in chain[at + 1:]] == ["Event.wait", "Condition.wait"]
    assert wait["running"] is False and wait["awaiting"]
    assert any(f["line"] == _line("# AWAIT_LINE") for f in wait["await_chain"])


class _Lazy:
    """Like Django's SimpleLazyObject (the admin site, a request's user): asking for its class
    evaluates it, which runs app code (here it fails, as an admin site of an app without
    `django.contrib.admin` does)."""

    evaluations = 0

    @property  # type: ignore[misc]
    def __class__(self) -> type:
        _Lazy.evaluations += 1
        raise LookupError("No installed app with label 'admin'")


def test_the_heap_walk_runs_no_lazy_object_of_the_app(sock_dir: str) -> None:
    lazy = _Lazy()
    agent = Agent(sock_dir)
    gate, answers = threading.Event(), []
    anyio.run(_serve, agent, gate, answers, backend="asyncio")
    [state] = answers
    assert {r["path"] for r in state["requests"]} == {"/block", "/wait"}
    assert _Lazy.evaluations == 0, "the dump evaluated a lazy object of the app"
    del lazy


def test_a_request_ready_to_run_waits_for_no_thread(sock_dir: str) -> None:
    # A request stepping through `await asyncio.sleep(0)` (anyio's checkpoints, a stream's
    # hand-over) is ready to run on the loop between its steps: it waits for the loop, not
    # for a thread working for it.
    agent = Agent(sock_dir)
    gate = threading.Event()
    rows: list[dict[str, Any]] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while not gate.is_set():
            await asyncio.sleep(0)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    def dump() -> None:
        try:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and \
                    not any(not r["running"] for r in rows):
                rows.extend(agent.respond({"op": "dump"}).get("requests", []))
                time.sleep(0.01)
        finally:
            gate.set()

    async def serve() -> None:
        wrapped = agent.middleware(app)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped),
                                     base_url="http://test", timeout=30) as client:
            threading.Thread(target=dump).start()
            await client.get("/spin")

    asyncio.run(serve())
    ready = [r for r in rows if not r["running"]]
    assert ready, rows
    assert all(r["thread"] is None for r in ready), ready
