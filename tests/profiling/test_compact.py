"""The shipped call tree: built from pyinstrument's frame records, cut at the agent, compacted."""

from __future__ import annotations

import asyncio
import inspect
from collections import deque
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from apiscope.agent.profiling import ANCHOR, ProfilingOptions, compact_tree, parse_frame
from apiscope.agent.runtime import Agent
from tests.profiling.trees import all_nodes

ROOT = ["MainThread\x00<thread>\x001", "run\x00/usr/lib/python3.11/asyncio/runners.py\x00100"]
AROUND = "\x00".join((ANCHOR[0], ANCHOR[1], str(ANCHOR[2]))) + "\x01l140"


def frame(function: str, line: int, file: str = "/srv/app/main.py", cls: str = "") -> str:
    return f"{function}\x00{file}\x001\x01l{line}" + (f"\x01c{cls}" if cls else "")


def records() -> list[tuple[list[str], float]]:
    handler = frame("handler", 12)
    return [
        ([*ROOT, AROUND, handler, frame("query", 30), frame("sleep", 649, "/lib/tasks.py"),
          "[await]"], 0.080),
        ([*ROOT, AROUND, handler, frame("render", 20)], 0.015),
        ([*ROOT, AROUND, handler, frame("tiny", 40)], 0.0002),  # below the floor
        ([*ROOT, AROUND, frame("handler", 13), "[await]"], 0.0004),  # a tiny await, folded
        ([*ROOT, AROUND, "[await]"], 0.001),  # awaiting in the agent's own frame
        (ROOT, 0.002),  # outside the anchor (profiler start/stop): charged to the root
    ]


def find(tree: dict[str, Any], function: str) -> dict[str, Any]:
    stack = [tree]
    while stack:
        node = stack.pop()
        if node["function"] == function:
            return node
        stack.extend(node["children"])
    raise AssertionError(f"{function} not in tree")


def test_tree_below_the_agent_with_await_under_the_awaiting_frame() -> None:
    tree = compact_tree(records(), "GET /q", 98.6)
    assert (tree["function"], tree["file"], tree["time_ms"]) == ("GET /q", "", 98.6)
    # the agent frame's own 1 ms, plus the 0.4 ms await of line 13 (under the 1 ms floor)
    assert tree["await_ms"] == 1.4
    [handler] = [c for c in tree["children"] if c["line"] == 12]
    assert handler["time_ms"] == 95.2 and handler["function"] == "handler"
    sleep = find(tree, "sleep")
    assert (sleep["line"], sleep["await_ms"], sleep["children"]) == (649, 80.0, [])
    assert find(tree, "query")["await_ms"] == 0.0
    assert find(tree, "render")["time_ms"] == 15.0
    assert all(c["function"] != "tiny" for c in handler["children"])  # 0.2 ms < 1 ms floor
    assert sum(n["await_ms"] for n in all_nodes(tree)) == 81.4


def test_node_cap_keeps_the_heaviest_nodes() -> None:
    recs = [([*ROOT, AROUND, frame("handler", 1), frame(f"f{i}", i)], 0.002 * (i + 1))
            for i in range(50)]
    tree = compact_tree(recs, "GET /x", 2550.0, ProfilingOptions(max_nodes=10,
                                                                 min_node_share=0.0))
    nodes = all_nodes(tree)
    assert len(nodes) == 11  # the root and ten nodes
    kept = sorted(n["line"] for n in nodes if n["function"].startswith("f"))
    assert kept == list(range(41, 50))  # the handler and the nine heaviest of its children
    assert find(tree, "handler")["time_ms"] == 2550.0  # folded children keep their time


def test_share_floor_scales_with_the_request() -> None:
    recs = [([*ROOT, AROUND, frame("handler", 1), frame("small", 2)], 0.004),
            ([*ROOT, AROUND, frame("handler", 1), frame("big", 3)], 0.996)]
    tree = compact_tree(recs, "GET /x", 1000.0)  # 1% of 1 s is 10 ms: small (4 ms) folds
    assert [c["function"] for c in find(tree, "handler")["children"]] == ["big"]


def test_frame_names_lines_and_classes() -> None:
    assert parse_frame(frame("execute", 41, cls="AsyncSession")) == (
        "AsyncSession.execute", "/srv/app/main.py", 41)
    assert parse_frame("sum\x00<built-in>\x000") == ("sum", "<built-in>", 0)
    assert parse_frame(frame("_run", 80, cls="NoneType"))[0] == "_run"


async def fetch_price(item: int) -> int:
    await asyncio.sleep(0.03)  # await-line
    return item


async def price(request: Request) -> JSONResponse:
    return JSONResponse({"price": await fetch_price(int(request.path_params["item"]))})


def test_a_real_profile_charges_the_await_to_its_line(tmp_path: Any) -> None:
    agent = Agent(str(tmp_path))
    agent.configure_profiling(ProfilingOptions(every=1))
    app = agent.middleware(Starlette(routes=[Route("/price/{item}", price)]))

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/price/0")).status_code == 200
            agent.pull()  # counts the first request: its route is armed
            assert (await client.get("/price/1")).status_code == 200  # profiled

    asyncio.run(drive())
    [profile] = list(agent.profiles)
    assert (profile["method"], profile["route"]) == ("GET", "/price/{item}")
    line = inspect.getsourcelines(fetch_price)[1] + 1
    awaiting = [n for n in all_nodes(profile["tree"]) if n["await_ms"] > 0]
    sleep = max(awaiting, key=lambda n: n["await_ms"])
    assert sleep["function"] == "sleep" and sleep["await_ms"] >= 25.0
    parent = next(n for n in all_nodes(profile["tree"]) if sleep in n["children"])
    assert (parent["function"], parent["file"], parent["line"]) == (
        "fetch_price", __file__, line)
    assert agent.pull()["profiling"]["profiled"] == 1 and agent.pull()["profiles"] == []
    assert deque(agent.profiles) == deque()


def test_only_the_profiled_request_runs_under_the_profiler(tmp_path: Any) -> None:
    import sys

    seen: dict[str, Any] = {}
    querying, answered = asyncio.Event(), asyncio.Event()

    async def query(request: Request) -> JSONResponse:
        seen["own"] = sys.getprofile()  # the profiled request, running: sampled
        querying.set()
        await answered.wait()  # stands for a query
        return JSONResponse({"ok": True})

    agent = Agent(str(tmp_path))
    agent.configure_profiling(ProfilingOptions(every=1, slow_ms=0))
    app = agent.middleware(Starlette(routes=[Route("/query", query)]))

    async def other_request() -> None:
        await querying.wait()
        seen["other"] = sys.getprofile()  # another request while the profiled one awaits
        await asyncio.sleep(0.02)
        answered.set()

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answered.set()
            await client.get("/query")
            agent.pull()  # counts it: the route is armed
            querying.clear()
            answered.clear()
            response, _ = await asyncio.gather(client.get("/query"), other_request())
            assert response.status_code == 200

    asyncio.run(drive())
    assert seen["own"] is not None and seen["other"] is None
    [profile] = list(agent.profiles)
    tree = profile["tree"]
    waiting = max(all_nodes(tree), key=lambda n: n["await_ms"])
    assert waiting["function"] == "Event.wait" and waiting["await_ms"] >= 15.0
    # running slices and suspensions account for the whole request, within a few ms
    assert abs(tree["time_ms"] - profile["duration_ms"]) < 5.0


async def store_later() -> None:
    await asyncio.sleep(0.08)  # after the response: the client does not wait for it


async def ingest(request: Request) -> JSONResponse:
    await asyncio.sleep(0.03)  # before the response
    return JSONResponse({"ok": True}, background=BackgroundTask(store_later))


def test_what_runs_after_the_response_is_not_in_the_requests_profile(tmp_path: Any) -> None:
    """Starlette runs a response's background tasks in the request's own call, after its last
    byte went out: their awaits are no part of the latency the profile explains."""
    agent = Agent(str(tmp_path))
    agent.configure_profiling(ProfilingOptions(every=1))
    app = agent.middleware(Starlette(routes=[Route("/ingest", ingest, methods=["POST"])]))

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.post("/ingest")).status_code == 200
            agent.pull()  # its route is armed
            assert (await client.post("/ingest")).status_code == 200  # profiled

    asyncio.run(drive())
    [profile] = list(agent.profiles)
    nodes = list(all_nodes(profile["tree"]))
    assert not any(n["function"] == "store_later" for n in nodes)
    sleep = max((n for n in nodes if n["await_ms"] > 0), key=lambda n: n["await_ms"])
    parent = next(n for n in nodes if sleep in n["children"])
    assert parent["function"] == "ingest" and 25.0 <= sleep["await_ms"] < 70.0
    assert sum(n["await_ms"] for n in nodes) < 70.0
