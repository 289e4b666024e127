"""Hand-built stored profiles, their trees written in the agent's JSON shape, for the analysis
and export tests."""

from __future__ import annotations

from typing import Any

from apiscope.model import ProfileNode, RouteInfo, StoredProfile
from tests.analysis.builder import APP, PID, SITE, T0, Spec, healthy

ORDERS = "/srv/shop/shop/orders.py"


def all_nodes(tree: dict[str, Any]) -> list[dict[str, Any]]:
    """Every node of a tree in the agent's JSON shape."""
    out, stack = [], [tree]
    while stack:
        found = stack.pop()
        out.append(found)
        stack.extend(found["children"])
    return out


def node(function: str, file: str, line: int, time_ms: float, await_ms: float = 0.0,
         *children: dict[str, Any]) -> dict[str, Any]:
    return {"function": function, "file": file, "line": line, "time_ms": time_ms,
            "await_ms": await_ms, "children": list(children)}


def awaiting_profile(route: str, duration: float, query_ms: float, start: float,
                     cpu_ms: float = 2.0) -> StoredProfile:
    """A request whose handler awaits `AsyncSession.execute` at orders.py:41 (inside
    SQLAlchemy, where the await really suspends) and computes for `cpu_ms`."""
    method, template = route.split(" ")
    execute = node("AsyncSession.execute", f"{SITE}/sqlalchemy/ext/asyncio/session.py", 461,
                   query_ms, 0.0,
                   node("greenlet_spawn", f"{SITE}/sqlalchemy/util/_concurrency_py3k.py", 190,
                        query_ms, query_ms))
    handler = node("list_orders", ORDERS, 41, query_ms, 0.0, execute)
    render = node("render_orders", ORDERS, 47, cpu_ms)
    framework = node("APIRoute.handle", f"{SITE}/starlette/routing.py", 289,
                     query_ms + cpu_ms, 0.0, handler, render)
    tree = node(route, "", 0, duration, duration - query_ms - cpu_ms, framework)
    return StoredProfile(PID, start, method, template, duration, ProfileNode.from_json(tree))


def cpu_profile(route: str, duration: float, start: float) -> StoredProfile:
    """A request busy computing, with one small await (a cache read) on the way."""
    method, template = route.split(" ")
    crunch = node("search_items", APP, 44, duration - 3.0)
    cache = node("get", f"{SITE}/redis/asyncio/client.py", 600, 3.0, 3.0)
    handler = node("search_items", APP, 40, 3.0, 0.0, cache)
    tree = node(route, "", 0, duration, 0.0, crunch, handler)
    return StoredProfile(PID, start, method, template, duration, ProfileNode.from_json(tree))


def series(make: Any, route: str, n: int, *args: float) -> list[StoredProfile]:
    return [make(route, *args, T0 + i) for i in range(n)]


def healthy_with_orders() -> Spec:
    """The healthy app with `GET /orders` served by the handler these profiles show."""
    spec = healthy()
    spec.routes = [RouteInfo("GET", "/orders", "shop.orders:list_orders", ORDERS, 40, True)
                   if route.template == "/orders" else route for route in spec.routes]
    return spec


def waiting_profile(route: str, duration: float, wait_ms: float, start: float,
                    leaf: str = "Event.wait") -> StoredProfile:
    """A long poll: the handler awaits `asyncio.wait_for(news.wait(), timeout)` at
    orders.py:52, suspended in asyncio's `leaf` (an event another request sets)."""
    method, template = route.split(" ")
    module = {"Event.wait": "locks.py", "Lock.acquire": "locks.py",
              "Queue.get": "queues.py"}[leaf]
    wait = node(leaf, f"/usr/lib/python3.12/asyncio/{module}", 212, wait_ms, wait_ms)
    wait_for = node("wait_for", "/usr/lib/python3.12/asyncio/tasks.py", 520, wait_ms, 0.0, wait)
    handler = node("list_orders", ORDERS, 52, wait_ms, 0.0, wait_for)
    framework = node("APIRoute.handle", f"{SITE}/starlette/routing.py", 289, wait_ms, 0.0,
                     handler)
    tree = node(route, "", 0, duration, duration - wait_ms, framework)
    return StoredProfile(PID, start, method, template, duration, ProfileNode.from_json(tree))
