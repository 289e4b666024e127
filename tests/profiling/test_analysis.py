"""Per-route aggregation of profiles, the slow_await rule, and slow_endpoint's evidence."""

from __future__ import annotations

from pathlib import Path

from apiscope.analysis.profiles import aggregate, breakdown
from apiscope.analysis.report import build_report
from tests.analysis.builder import SITE, T0, healthy, request, write_and_open
from tests.profiling.trees import ORDERS, awaiting_profile, cpu_profile, node, series

ROOTS = ("/srv/shop",)


def report_of(spec, tmp_path: Path, **kwargs):  # type: ignore[no-untyped-def]
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        return build_report(reader, **kwargs)


def flags_of(report, kind):  # type: ignore[no-untyped-def]
    return [f for f in report["flags"] if f["kind"] == kind]


def test_await_is_charged_to_the_awaiting_user_line() -> None:
    split = breakdown(awaiting_profile("GET /orders", 300.0, 240.0, T0), ROOTS)
    assert split.total_ms == 300.0 and split.await_ms == 240.0 + 58.0
    assert split.sites == {(ORDERS, 41, "list_orders"): (240.0, 0.0, "AsyncSession.execute")}
    assert split.blocked_ms == 0.0  # no loop_blocked_ms in these trees: the loop was idle


def test_aggregate_per_route() -> None:
    profiles = (series(awaiting_profile, "GET /orders", 4, 300.0, 240.0)
                + series(cpu_profile, "GET /search", 3, 120.0))
    routes = aggregate(profiles, ROOTS)
    orders, search = routes["GET /orders"], routes["GET /search"]
    assert (orders.count, orders.total_ms, orders.cpu_ms) == (4, 1200.0, 8.0)
    site = orders.dominant
    assert site is not None and (site.file, site.line, site.awaited) == (
        ORDERS, 41, "AsyncSession.execute")
    assert (site.total_ms, site.requests, site.typical_ms) == (960.0, 4, 240.0)
    assert orders.unattributed_await_ms == 4 * 58.0  # the root's own await: no user line
    assert search.cpu_ms == 3 * 117.0 and search.share(search.sites[0]) == 9.0 / 360.0
    assert orders.tree is not None and orders.tree["time_ms"] == 1200.0  # merged
    assert [p["start"] for p in orders.slowest][:1] == [T0]


def test_slow_await_flag_at_the_awaiting_line(tmp_path: Path) -> None:
    spec = healthy()
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 300.0, 240.0)
    [flag] = flags_of(report_of(spec, tmp_path), "slow_await")
    assert flag["route"] == "GET /orders" and flag["severity"] == "medium"  # 80%
    assert flag["location"] == {"file": ORDERS, "line": 41, "function": "list_orders"}
    assert "`AsyncSession.execute` at orders.py:41" in flag["evidence"]
    assert "typically 240 ms" in flag["evidence"]
    assert flag["metric"]["await_share"] == 0.8 and flag["metric"]["profiles"] == 6


def test_too_few_profiles_raise_nothing(tmp_path: Path) -> None:
    spec = healthy()
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
    spec = healthy()
    spec.requests += [request("GET /orders", T0 + i * 0.1, 300.0) for i in range(40)]
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 300.0, 240.0)
    [slow] = [f for f in flags_of(report_of(spec, tmp_path), "slow_endpoint")
              if f["route"] == "GET /orders"]
    assert ("80% of the slowest profiled requests' time spent awaiting"
            " `AsyncSession.execute` at orders.py:41") in slow["evidence"]


def test_await_with_no_user_frame_is_no_site() -> None:
    # a sync handler: its await is anyio's wait for the worker thread, in library code only
    pool = node("run_sync", f"{SITE}/anyio/to_thread.py", 56, 200.0, 200.0)
    tree = node("GET /stock", "", 0, 201.0, 0.0, pool)
    profile = {"method": "GET", "route": "/stock", "duration_ms": 201.0, "tree": tree}
    route = aggregate([profile] * 5, ROOTS)["GET /stock"]
    assert route.sites == [] and route.await_ms == 1000.0 and route.dominant is None


def test_await_stretched_by_a_blocked_loop_is_not_blamed(tmp_path: Path) -> None:
    spec = healthy()
    spec.profiles = series(awaiting_profile, "GET /orders", 6, 300.0, 240.0)
    for profile in spec.profiles:  # other code blocked the loop for 235 of the 240 ms
        greenlet = profile["tree"]["children"][0]["children"][0]["children"][0]["children"][0]
        greenlet["loop_blocked_ms"] = 235.0
    routes = aggregate(spec.profiles, ROOTS)
    assert routes["GET /orders"].blocked_ms == 6 * 235.0
    assert flags_of(report_of(spec, tmp_path), "slow_await") == []
