"""Per-route aggregation of profiles, the slow_await rule, and slow_endpoint's evidence."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from apiscope.analysis.profiles import SiteAwait, aggregate, breakdown, merge_trees
from apiscope.analysis.report import build_report
from apiscope.model import ProfileNode, StoredProfile
from tests.analysis.builder import SITE, T0, healthy, request, write_and_open
from tests.profiling.trees import (
    ORDERS,
    awaiting_profile,
    cpu_profile,
    healthy_with_orders,
    node,
    series,
    waiting_profile,
)

ROOTS = ("/srv/shop",)


def report_of(spec, tmp_path: Path, **kwargs):  # type: ignore[no-untyped-def]
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        return build_report(reader, **kwargs).to_json()


def flags_of(report, kind):  # type: ignore[no-untyped-def]
    return [f for f in report["flags"] if f["kind"] == kind]


def test_await_is_charged_to_the_awaiting_user_line() -> None:
    split = breakdown(awaiting_profile("GET /orders", 300.0, 240.0, T0), ROOTS)
    assert split.total_ms == 300.0 and split.await_ms == 240.0 + 58.0
    assert split.sites == {(ORDERS, 41, "list_orders"): SiteAwait(
        240.0, "AsyncSession.execute", "sqlalchemy")}
    assert split.outside_ms == 0.0  # the root's own time is its await here


def test_aggregate_per_route() -> None:
    profiles = (series(awaiting_profile, "GET /orders", 4, 300.0, 240.0)
                + series(cpu_profile, "GET /search", 3, 120.0))
    routes = aggregate(profiles, ROOTS)
    orders, search = routes["GET /orders"], routes["GET /search"]
    assert (orders.count, orders.total_ms, orders.cpu_ms) == (4, 1200.0, 8.0)
    site = orders.dominant
    assert site is not None and (site.file, site.line, site.awaited, site.resource) == (
        ORDERS, 41, "AsyncSession.execute", "sqlalchemy")
    assert (site.total_ms, site.requests, site.typical_ms, site.floor_ms) == (960.0, 4, 240.0,
                                                                              240.0)
    assert site.share == 0.8  # 240 of 240 + 60 (2 ms computing, 58 ms awaiting at no site)
    assert search.cpu_ms == 3 * 117.0 and search.dominant is not None
    assert search.dominant.share == 3.0 / 120.0
    assert orders.tree is not None and orders.tree.time_ms == 1200.0  # merged
    assert [p.start for p in orders.slowest][:1] == [T0]


def test_a_site_costs_its_floor_not_its_outliers() -> None:
    # a cache in front of the query: most requests never await it, two missed it badly
    profiles = series(awaiting_profile, "GET /orders", 6, 12.0, 1.0)
    profiles += series(awaiting_profile, "GET /orders", 2, 2000.0, 1990.0)
    site = aggregate(profiles, ROOTS)["GET /orders"].dominant
    assert site is not None and site.floor_ms == 1.0 and site.typical_ms == 1.0
    assert site.total_ms == 6 * 1.0 + 2 * 1990.0


def test_contended_resource_is_charged_to_no_line() -> None:
    # every route's queries are slow at once: a pool or a starved worker, not one line
    profiles = []
    for route in ("GET /orders", "GET /orders/{id}", "GET /customers", "GET /invoices"):
        profiles += series(awaiting_profile, route, 4, 300.0, 240.0)
    routes = aggregate(profiles, ROOTS)
    assert all(r.sites[0].contended and r.dominant is None for r in routes.values())
    two = aggregate(profiles[:8], ROOTS)["GET /orders"]
    assert two.dominant is not None  # two routes: not yet


def test_a_lock_every_route_queues_at_is_charged_to_its_line() -> None:
    # A database wrapper handing out one connection at a time (LNbits' takes an asyncio Lock
    # for every query): every route waits there, but at one line, its turn at that lock.
    profiles = []
    for route in ("GET /orders", "GET /orders/{id}", "GET /customers", "GET /invoices"):
        profiles += [waiting_profile(route, 300.0, 240.0, T0 + i, "Lock.acquire")
                     for i in range(4)]
    for route in aggregate(profiles, ROOTS).values():
        site = route.dominant
        assert site is not None and not site.contended and site.line == 52
        assert site.waits_for == "Lock.acquire"


def test_slow_await_flag_at_the_awaiting_line(tmp_path: Path) -> None:
    spec = healthy_with_orders()
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 300.0, 240.0)
    [flag] = flags_of(report_of(spec, tmp_path), "slow_await")
    assert flag["route"] == "GET /orders" and flag["severity"] == "medium"  # 80%
    assert flag["location"] == {"file": ORDERS, "line": 41, "function": "list_orders"}
    assert "`AsyncSession.execute` at orders.py:41" in flag["evidence"]
    assert ("at least 240 ms in 3 requests of 4 (typically 240 ms), over the 200 ms objective"
            " by itself") in flag["evidence"]
    assert flag["metric"]["await_share"] == 0.8 and flag["metric"]["profiles"] == 6


def test_too_few_profiles_raise_nothing(tmp_path: Path) -> None:
    spec = healthy_with_orders()
    spec.profiles = series(awaiting_profile, "GET /orders", 2, 300.0, 240.0)
    assert flags_of(report_of(spec, tmp_path), "slow_await") == []


def test_cpu_slow_endpoint_is_not_blamed_on_an_await(tmp_path: Path) -> None:
    spec = healthy()
    spec.requests += [request("GET /search", T0 + i * 0.1, 400.0) for i in range(40)]
    spec.profiles = series(cpu_profile, "GET /search", 8, 400.0)
    report = report_of(spec, tmp_path)
    assert flags_of(report, "slow_await") == []
    [slow] = [f for f in flags_of(report, "slow_endpoint") if f["route"] == "GET /search"]
    assert "awaiting" not in slow["evidence"]


def test_slow_endpoint_names_the_dominant_await(tmp_path: Path) -> None:
    spec = healthy_with_orders()
    # Slow all along (not only in the warm-up, which slow_endpoint leaves out when it can).
    spec.requests += [request("GET /orders", T0 + i * 0.7, 300.0) for i in range(40)]
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 300.0, 240.0)
    [slow] = [f for f in flags_of(report_of(spec, tmp_path), "slow_endpoint")
              if f["route"] == "GET /orders"]
    assert ("80% of its profiled requests' own time spent awaiting"
            " `AsyncSession.execute` at orders.py:41") in slow["evidence"]


def test_a_middleware_awaiting_the_app_run_in_another_task_is_no_site(tmp_path: Path) -> None:
    # Starlette's BaseHTTPMiddleware runs the rest of the app in a task of its own: the
    # request's profile sees only the middleware's `await call_next(request)`, for all of the
    # route's time, and never the handler. That line is not where the route's time goes.
    middleware = "/srv/shop/shop/middleware.py"
    stream = node("MemoryObjectReceiveStream.receive", f"{SITE}/anyio/streams/memory.py", 117,
                  290.0, 290.0)
    call_next = node("BaseHTTPMiddleware.__call__.<locals>.call_next",
                     f"{SITE}/starlette/middleware/base.py", 158, 290.0, 0.0, stream)
    dispatch = node("RequestLog.dispatch", middleware, 48, 298.0, 0.0, call_next)
    tree = node("GET /orders", "", 0, 300.0, 2.0, dispatch)
    profiles = [StoredProfile(0, T0 + i, "GET", "/orders", 300.0, ProfileNode.from_json(tree))
                for i in range(6)]
    spec = healthy_with_orders()
    spec.requests += [request("GET /orders", T0 + i * 0.7, 300.0) for i in range(40)]
    spec.profiles = profiles
    report = report_of(spec, tmp_path)
    assert flags_of(report, "slow_await") == []
    [slow] = [f for f in flags_of(report, "slow_endpoint") if f["route"] == "GET /orders"]
    assert "call_next" not in slow["evidence"] and slow["location"]["line"] != 48
    # without the route table, the profile alone cannot tell
    assert aggregate(profiles, ("/srv/shop",))["GET /orders"].dominant is not None


def test_a_middleware_passing_the_request_on_is_not_where_the_frameworks_awaits_go(
        tmp_path: Path) -> None:
    # FastAPI's `@app.middleware("http")` with the handler seen in the same profile (the task
    # running the app inherits the profiler): below `await call_next(request)` the framework
    # also awaits the pool thread running a sync dependency, and anyio's events. Those are
    # no await of the middleware's line (a long poll waiting to be notified, it would say).
    middleware = "/srv/shop/shop/middleware.py"
    def profile(start: float) -> StoredProfile:
        query = node("AsyncSession.execute", f"{SITE}/sqlalchemy/ext/asyncio/session.py", 461,
                     90.0, 90.0)
        handler = node("list_orders", ORDERS, 41, 90.0, 0.0, query)
        dependency = node("run_sync_in_worker_thread", f"{SITE}/anyio/_backends/_asyncio.py",
                          2779, 150.0, 150.0)
        event = node("Event.wait", f"{SITE}/anyio/_backends/_asyncio.py", 2009, 42.0, 42.0)
        route = node("APIRoute.handle", f"{SITE}/fastapi/routing.py", 1373, 282.0, 0.0,
                     dependency, handler, event)
        call_next = node("call_next", f"{SITE}/starlette/middleware/base.py", 158, 290.0, 0.0,
                         node("coro", f"{SITE}/starlette/middleware/base.py", 149, 282.0,
                              0.0, route))
        dispatch = node("request_id", middleware, 47, 298.0, 0.0, call_next)
        tree = node("GET /orders", "", 0, 300.0, 2.0, dispatch)
        return StoredProfile(0, start, "GET", "/orders", 300.0, ProfileNode.from_json(tree))

    spec = healthy_with_orders()
    spec.requests += [request("GET /orders", T0 + i * 0.7, 300.0) for i in range(40)]
    spec.profiles = [profile(T0 + i) for i in range(6)]
    report = report_of(spec, tmp_path)
    [slow] = [f for f in flags_of(report, "slow_endpoint") if f["route"] == "GET /orders"]
    assert slow["location"]["line"] != 47 and "middleware.py" not in slow["location"]["file"]
    assert "request_id" not in slow["evidence"] and "notify" not in slow["evidence"]


def test_await_with_no_user_frame_is_no_site() -> None:
    # a sync handler: its await is anyio's wait for the worker thread, in library code only
    pool = node("run_sync", f"{SITE}/anyio/to_thread.py", 56, 200.0, 200.0)
    tree = node("GET /stock", "", 0, 201.0, 0.0, pool)
    profile = StoredProfile(0, 0.0, "GET", "/stock", 201.0, ProfileNode.from_json(tree))
    route = aggregate([profile] * 5, ROOTS)["GET /stock"]
    assert route.sites == [] and route.await_ms == 1000.0 and route.dominant is None
    assert route.outside_ms == 5.0  # the root's own millisecond: outside the request's frames


def test_time_outside_the_request_is_not_its_own(tmp_path: Path) -> None:
    # other code seen at the root, outside the request: the query still dominates the rest
    spec = healthy_with_orders()
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 1000.0, 240.0)
    # the root awaiting nothing, so it has 758 ms of its own: other code
    spec.profiles = [replace(p, tree=replace(p.tree, await_ms=0.0)) for p in spec.profiles
                     if p.tree is not None]
    route = aggregate(spec.profiles, ROOTS)["GET /orders"]
    assert route.outside_ms == 6 * 758.0 and route.dominant is not None
    assert route.dominant.share == 240.0 / 242.0
    [flag] = flags_of(report_of(spec, tmp_path), "slow_await")
    assert flag["severity"] == "high"


def test_an_await_within_the_objective_is_the_price_of_the_call(tmp_path: Path) -> None:
    # a 150 ms outside call in a route that meets its 200 ms objective: nothing to fix here
    spec = healthy_with_orders()
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 155.0, 150.0)
    assert flags_of(report_of(spec, tmp_path), "slow_await") == []
    [flag] = flags_of(report_of(spec, tmp_path, slo_ms=100.0), "slow_await")
    assert flag["location"]["line"] == 41 and flag["metric"]["slo_ms"] == 100.0


def test_merged_tree_sums_matched_nodes_heaviest_first() -> None:
    a = ProfileNode.from_json(node("GET /x", "", 0, 10.0, 1.0, node("f", ORDERS, 1, 6.0),
                                   node("g", ORDERS, 2, 3.0)))
    b = ProfileNode.from_json(node("GET /x", "", 0, 20.0, 0.0, node("g", ORDERS, 2, 15.0),
                                   node("h", ORDERS, 3, 5.0, 5.0)))
    merged = merge_trees([a, b])
    assert merged is not None and (merged.time_ms, merged.await_ms) == (30.0, 1.0)
    assert [(c.function, c.time_ms, c.await_ms) for c in merged.children] == [
        ("g", 18.0, 0.0), ("f", 6.0, 0.0), ("h", 5.0, 5.0)]
    assert merge_trees([a]) == a and merge_trees([]) is None


def test_a_route_waiting_to_be_notified_is_said_so_and_graded_low(tmp_path: Path) -> None:
    # A long poll: each request waits up to 2 s for an asyncio Event another request sets.
    spec = healthy_with_orders()
    spec.requests += [request("GET /orders", T0 + i * 0.7, 2000.0) for i in range(40)]
    spec.profiles = series(waiting_profile, "GET /orders", 6, 2000.0, 1990.0)
    report = report_of(spec, tmp_path)
    for kind in ("slow_await", "slow_endpoint"):
        [flag] = [f for f in flags_of(report, kind) if f["route"] == "GET /orders"]
        assert flag["severity"] == "low", kind
        assert flag["location"]["line"] == 52
        assert ("there it waits in Event.wait() for something else in this process to notify"
                " it") in flag["evidence"]
        assert flag["metric"]["waits_for"] == "Event.wait"
        assert "long poll" in flag["suggestion"]


def test_a_route_waiting_for_a_lock_is_not_taken_for_a_long_poll(tmp_path: Path) -> None:
    # Requests queueing for an asyncio Lock wait on one another: contention, not news.
    spec = healthy_with_orders()
    spec.requests += [request("GET /orders", T0 + i * 0.7, 2000.0) for i in range(40)]
    spec.profiles = [waiting_profile("GET /orders", 2000.0, 1990.0, T0 + i, "Lock.acquire")
                     for i in range(6)]
    report = report_of(spec, tmp_path)
    for kind in ("slow_await", "slow_endpoint"):
        [flag] = [f for f in flags_of(report, kind) if f["route"] == "GET /orders"]
        assert flag["severity"] == "high" and flag["metric"]["waits_for"] == "Lock.acquire"
        assert "notify" not in flag["evidence"] and "long poll" not in flag["suggestion"]
        assert ("there it waits in Lock.acquire() for its turn: other requests of this"
                " process hold it meanwhile") in flag["evidence"]
        assert "take turns" in flag["suggestion"]
