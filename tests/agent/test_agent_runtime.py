"""The agent in this process: instrument(), the socket server, and AgentClient pulling it."""

from __future__ import annotations

import json
import os
import socket
import stat
import time
from collections.abc import MutableMapping
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

import apiscope
from apiscope.agent.middleware import AgentMiddleware
from apiscope.agent.runtime import Agent, current_agent, shutdown_agent
from apiscope.collectors.agent_client import AgentClient, AgentError, AgentUnavailable
from apiscope.model import RequestRecord, RouteInfo

from .helpers import get_all


def sync_app() -> FastAPI:
    app = FastAPI()

    @app.get("/sync/{n}")
    def sync_handler(n: int) -> dict[str, int]:
        return {"n": n}

    return app


def layers(app: Any) -> int:
    """How many AgentMiddleware wrap the app's middleware stack (built on first call)."""
    count, stack = 0, app.middleware_stack
    while isinstance(stack, AgentMiddleware):
        count, stack = count + 1, stack.app
    return count


def test_instrument_is_idempotent_and_outermost(sock_dir: str) -> None:
    app = sync_app()
    assert apiscope.instrument(app, directory=sock_dir, start=False) is app
    assert apiscope.instrument(app, directory=sock_dir, start=False) is app
    get_all(app, ["/sync/1", "/sync/2"])
    assert layers(app) == 1
    assert type(app.middleware_stack.app).__name__ == "ServerErrorMiddleware"
    agent = current_agent()
    assert [(e.route, e.status) for e in agent.recorder.drain()] == [("/sync/{n}", 200)] * 2
    assert ("GET", "/sync/{n}") in {(r["method"], r["template"]) for r in agent.routes.rows}


def test_instrument_after_start_wraps_the_live_stack(sock_dir: str) -> None:
    app = sync_app()
    get_all(app, ["/sync/0"])  # the stack is built: the app is serving
    apiscope.instrument(app, directory=sock_dir, start=False)
    apiscope.instrument(app, directory=sock_dir, start=False)
    get_all(app, ["/sync/1"])
    assert layers(app) == 1
    assert [e.route for e in current_agent().recorder.drain()] == ["/sync/{n}"]


def test_instrument_plain_asgi_callable(sock_dir: str) -> None:
    async def raw(scope: MutableMapping[str, Any], receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    wrapped = apiscope.instrument(raw, directory=sock_dir, start=False)
    assert isinstance(wrapped, AgentMiddleware) and wrapped.app is raw
    assert apiscope.instrument(wrapped, directory=sock_dir, start=False) is wrapped
    get_all(wrapped, ["/x/42"])  # no framework names its routes: ids grouped from the path
    assert [(e.route, e.status) for e in current_agent().recorder.drain()] == [
        ("/x/{int}", 204)]
    assert current_agent().pull()["routing"] == {"source": "inferred", "frameworks": []}


def test_threadpool_state_is_read_from_the_serving_loop(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    assert agent.threadpool.sample() is None  # nothing captured before a request
    app = agent.middleware(sync_app())
    get_all(app, ["/sync/1"])
    sample = agent.threadpool.sample()
    assert sample is not None
    assert (sample["total_tokens"], sample["borrowed_tokens"], sample["waiting"]) == (40, 0, 0)


def test_client_pulls_requests_routes_and_stats(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    app = sync_app()
    agent.add_routes(app)
    wrapped = agent.middleware(app)
    agent.start()
    agent.start()  # idempotent
    try:
        path = agent.socket_path
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert path == os.path.join(sock_dir, f"agent-{os.getpid()}.sock")
        client = AgentClient(os.getpid(), sock_dir)
        assert client.available()  # the connection stays open for the pulls that follow
        get_all(wrapped, ["/sync/1", "/sync/2", "/missing"])
        batch = client.pull()
        assert [(r.method, r.route, r.status) for r in batch.requests] == [
            ("GET", "/sync/{n}", 200), ("GET", "/sync/{n}", 200), ("GET", "<unmatched>", 404)]
        assert all(isinstance(r, RequestRecord) and r.pid == os.getpid() for r in batch.requests)
        assert RouteInfo("GET", "/sync/{n}", f"{__name__}:sync_app.<locals>.sync_handler",
                         __file__, batch.routes[-1].line, False) in batch.routes
        assert (batch.stats.recorded, batch.stats.dropped, batch.stats.errors) == (3, 0, 0)
        assert batch.threadpool is not None and batch.threadpool.total_tokens == 40
        assert batch.profiles == []
        assert client.pull().requests == []  # each request is delivered once
    finally:
        agent.stop()
    assert not os.path.exists(path)
    with pytest.raises(AgentUnavailable):  # the open connection was closed by stop()
        client.pull()
    client.close()
    with AgentClient(os.getpid(), sock_dir) as client:
        assert not client.available()
        with pytest.raises(AgentUnavailable):
            client.pull()


def test_requests_ending_while_a_pull_is_answered_wait_for_the_next_one(sock_dir: str) -> None:
    """On a busy server requests end while every pull is answered: only a full batch asks
    the collector to pull again at once."""
    agent = Agent(sock_dir)
    wrapped = agent.middleware(sync_app())
    get_all(wrapped, ["/sync/1"])
    drain = agent.recorder.drain

    def drain_while_another_ends(limit: int) -> list[object]:
        out = drain(limit)
        get_all(wrapped, ["/sync/2"])
        return out

    agent.recorder.drain = drain_while_another_ends  # type: ignore[method-assign]
    first = agent.pull()
    agent.recorder.drain = drain  # type: ignore[method-assign]
    second = agent.pull()
    assert (len(first["requests"]), first["more"]) == (1, False)
    assert (len(second["requests"]), second["more"]) == (1, False)


def test_full_buffer_is_reported_as_dropped(sock_dir: str) -> None:
    from apiscope.agent.recorder import Recorder

    agent = Agent(sock_dir, recorder=Recorder(capacity=2))
    wrapped = agent.middleware(sync_app())
    agent.start()
    try:
        get_all(wrapped, [f"/sync/{i}" for i in range(5)])
        with AgentClient(os.getpid(), sock_dir) as client:
            first = client.pull(max_requests=1)
            batch = client.pull()
        assert (len(first.requests), first.more) == (1, True)
        assert (len(batch.requests), batch.more) == (1, False)
        assert first.requests[0].start < batch.requests[0].start  # oldest first
        assert (batch.stats.recorded, batch.stats.dropped) == (5, 3)
    finally:
        agent.stop()


def test_protocol_errors_get_an_answer_and_the_server_goes_on(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    agent.start()
    try:
        with socket.socket(socket.AF_UNIX) as raw:
            raw.settimeout(5)
            raw.connect(agent.socket_path)
            with raw.makefile("rwb") as stream:
                answers = []
                for line in (b"not json\n", b'{"op": "detach"}\n', b'{"op": "pull", "max": 0}\n',
                         b'{"op": "ping"}\n'):
                    stream.write(line)
                    stream.flush()
                    answers.append(json.loads(stream.readline()))
            assert "bad request" in answers[0]["error"]
            assert "unknown op 'detach'" in answers[1]["error"]
            assert "max must be a positive integer" in answers[2]["error"]
            assert answers[3] == {"pid": os.getpid(), "ok": True}
            with AgentClient(os.getpid(), sock_dir) as client:  # served while raw stays open
                assert client.available()
    finally:
        agent.stop()


def test_a_second_agent_on_the_same_socket_is_refused(sock_dir: str) -> None:
    first, second = Agent(sock_dir), Agent(sock_dir)
    first.start()
    try:
        with pytest.raises(OSError, match="already serving"):
            second.start()
        with AgentClient(os.getpid(), sock_dir) as client:
            assert client.available()
    finally:
        first.stop()


def test_current_agent_is_a_process_singleton(sock_dir: str) -> None:
    agent = current_agent(sock_dir)
    assert current_agent() is agent
    agent.start()
    with AgentClient(os.getpid(), sock_dir) as client:
        assert client.available()
    shutdown_agent()
    assert not os.path.exists(agent.socket_path)
    assert current_agent(sock_dir) is not agent


def test_instrument_keeps_serving_when_the_socket_dir_is_unsafe(
        tmp_path: Any, caplog: pytest.LogCaptureFixture) -> None:
    unsafe = tmp_path / "open"
    unsafe.mkdir()
    unsafe.chmod(0o777)
    app = Starlette(routes=[Route("/ok", ok)])
    apiscope.instrument(app, directory=str(unsafe))
    assert "not serving" in caplog.text
    assert get_all(app, ["/ok"])[0].status_code == 200


async def ok(request: Request) -> Response:
    return PlainTextResponse("ok")


def test_threadpool_saturation_is_visible_from_another_thread(sock_dir: str) -> None:
    """Three sync requests on a one-token pool: one runs, two wait, and a thread that is not
    the loop's (as the socket server is) reads exactly that."""
    import asyncio
    import threading
    import time

    import anyio.to_thread
    import httpx

    agent = Agent(sock_dir)
    gate = threading.Event()

    def blocking(request: Request) -> Response:
        gate.wait(30)
        return PlainTextResponse("ok")

    app = agent.middleware(Starlette(routes=[Route("/b", blocking)]))

    async def main() -> dict[str, Any]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = 1
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            calls = [asyncio.create_task(client.get("/b")) for _ in range(3)]
            deadline = time.monotonic() + 20
            try:
                while True:
                    sample = await asyncio.to_thread(agent.threadpool.sample)
                    if sample and sample["waiting"] == 2 or time.monotonic() > deadline:
                        return sample or {}
                    await asyncio.sleep(0.01)
            finally:
                gate.set()
                assert [r.status_code for r in await asyncio.gather(*calls)] == [200] * 3

    sample = asyncio.run(main())
    assert (sample["total_tokens"], sample["borrowed_tokens"], sample["waiting"]) == (1, 1, 2)


def test_client_reconnects_once_to_a_restarted_agent(sock_dir: str) -> None:
    first = Agent(sock_dir)
    first.start()
    with AgentClient(os.getpid(), sock_dir) as client:
        try:
            assert client.pull().requests == []
        finally:
            first.stop()
        second = Agent(sock_dir)
        second.start()
        try:
            assert client.pull().stats.recorded == 0  # the kept connection was stale
        finally:
            second.stop()


def test_instrument_sets_the_profiling_share(sock_dir: str) -> None:
    app = sync_app()
    apiscope.instrument(app, directory=sock_dir, start=False, profile_every=0)
    get_all(app, [f"/sync/{i}" for i in range(30)])
    agent = current_agent()
    assert agent.profiling.options.every == 0
    assert list(agent.profiles) == []  # 0 turns per-request profiles off


def test_a_pull_sets_what_the_loop_watchdogs_may_spend_following(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    agent.start()
    try:
        with AgentClient(os.getpid(), sock_dir) as client:
            client.pull(watch_share=0.001)
            assert agent.watchdogs.follow_share == 0.001
            client.pull()  # not said again: kept
            assert agent.watchdogs.follow_share == 0.001
            for bad in (-0.1, 0.5, "much", True):
                with pytest.raises(AgentError, match="watch_share must be a number"):
                    client.pull(watch_share=bad)  # type: ignore[arg-type]
            assert agent.watchdogs.follow_share == 0.001
    finally:
        agent.stop()


def test_a_pull_sets_the_share_of_the_clock_the_profiles_may_sample(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    default = agent.profiling.options.max_share
    agent.start()
    try:
        with AgentClient(os.getpid(), sock_dir) as client:
            answer = client.pull(profile_share=0.005)
            assert agent.profiling.share == 0.005
            assert agent.profiling.budget is not None and agent.profiling.budget.rate == 0.005
            assert answer.profiling is not None and "spent_seconds" in answer.profiling
            client.pull()  # not said again: kept, also through the first pull's `load`
            assert agent.profiling.share == 0.005
            client.pull(profile_share=0.5)  # never above the target's own options
            assert agent.profiling.share == default
            for bad in (-0.1, 1.5, "much", True):
                with pytest.raises(AgentError, match="profile_share must be a number"):
                    client.pull(profile_share=bad)  # type: ignore[arg-type]
            assert agent.profiling.share == default
    finally:
        agent.stop()


def test_a_lowered_profile_share_caps_what_is_saved_up() -> None:
    from apiscope.agent.profiling import BURST_SECONDS, TimeBudget

    now = [0.0]
    budget = TimeBudget(0.02, lambda: now[0])
    assert budget.balance == pytest.approx(0.02 * BURST_SECONDS)
    budget.set_share(0.005)
    assert budget.balance == pytest.approx(0.005 * BURST_SECONDS)
    budget.spend(0.1)
    now[0] = 10.0  # 10 s at the new share
    assert budget.refilled() == pytest.approx(0.005 * BURST_SECONDS - 0.1 + 0.05)


def test_the_route_table_is_sent_again_only_when_it_changed(sock_dir: str) -> None:
    agent = Agent(sock_dir)
    app = sync_app()
    agent.add_routes(app)
    agent.start()
    try:
        with AgentClient(os.getpid(), sock_dir) as client:
            first = client.pull()
            assert first.routes is not None and ("GET", "/sync/{n}") in {
                (r.method, r.template) for r in first.routes}
            assert client.pull().routes is None  # unchanged: the collector has it

            @app.get("/later")
            def later() -> dict[str, bool]:
                return {}

            # The pulls re-read the tables, at once after a change and then less often
            # (`RouteRegistry.refresh_if_due`): within seconds here.
            deadline = time.monotonic() + 10
            while (changed := client.pull()).routes is None and time.monotonic() < deadline:
                time.sleep(0.2)
            assert changed.routes is not None and ("GET", "/later") in {
                (r.method, r.template) for r in changed.routes}
            assert client.pull().routes is None
        with AgentClient(os.getpid(), sock_dir) as fresh:  # a new collector is sent it all
            routes = fresh.pull().routes
            assert routes is not None and len(routes) == len(changed.routes)
        # A collector of an earlier apiscope says no version: every answer has the table.
        answer = agent.respond({"op": "pull"})
        assert [r["template"] for r in answer["routes"]] == [r.template for r in routes]
    finally:
        agent.stop()
