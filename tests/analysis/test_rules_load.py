"""Rules under the conditions of a short, loaded session: each positive case beside the
negative case that keeps a busy healthy app unflagged (see builder.py)."""

from __future__ import annotations

import math
import random
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from apiscope.analysis.attribution import TOOL_ROOTS, is_tool_work
from apiscope.analysis.report import build_report
from apiscope.model import Frame, RouteInfo, SampleState, ThreadPoolSample
from tests.analysis.builder import (
    APP,
    LOOP_TID,
    PID,
    SITE,
    T0,
    W1,
    W2,
    Spec,
    app,
    healthy,
    idle_worker,
    on_loop,
    on_worker,
    request,
    resources,
    sample,
    write_and_open,
)

SEARCH = RouteInfo("GET", "/search", "shop.main:search", APP, 40, True)


def report_of(spec: Spec, tmp_path: Path, name: str = "s") -> dict[str, Any]:
    with write_and_open(spec, tmp_path / f"{name}.sqlite") as reader:
        return build_report(reader).to_json()


def flags_of(report: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [f for f in report["flags"] if f["kind"] == kind]


def sleeping_stock_pool(spec: Spec, busy: int) -> Spec:
    """An 8-token pool always full with requests waiting; `busy` threads sleep in the handler,
    the others finished their call and wait for the loop to take the result (token held)."""
    spec.threadpool = [ThreadPoolSample(T0 + i + 0.5, PID, 8, 8, 3 + i % 4) for i in range(30)]
    tids = [W1, W2, 10, 11, 12, 13, 14, 15]
    spec.per_window[5:9] = [sample(t, on_worker(app("export", 133)), 100, SampleState.BLOCKED,
                                   gil=False) for t in tids[:busy]]
    spec.per_window += [idle_worker(t, 100) for t in tids[busy:]]
    spec.requests += [request("GET /export", T0 + i * 0.1, 400.0) for i in range(300)]
    return spec


def test_full_pool_with_tokens_held_for_the_loop_is_saturation(tmp_path: Path) -> None:
    report = report_of(sleeping_stock_pool(healthy(), busy=2), tmp_path)
    [flag] = flags_of(report, "threadpool_saturation")
    assert flag["route"] == "GET /export" and flag["severity"] == "high"
    assert flag["metric"]["busy_workers_mean"] == 2.0 and flag["metric"]["total_tokens"] == 8


def test_each_process_pool_is_judged_alone(tmp_path: Path) -> None:
    # Two server workers, each with its own pool: the load went to one of them, whose pool was
    # full a third of the time; the other's never was. Pooled, they read a sixth: no flag.
    spec = sleeping_stock_pool(healthy(), busy=2)
    other = PID + 1
    spec.threadpool = [ThreadPoolSample(T0 + i + 0.5, PID, 8, 8 if i % 3 == 0 else 5, 0)
                       for i in range(30)]
    spec.threadpool += [ThreadPoolSample(T0 + i + 0.5, other, 8, 1, 0) for i in range(30)]
    [flag] = flags_of(report_of(spec, tmp_path), "threadpool_saturation")
    assert flag["severity"] == "medium" and flag["route"] == "GET /export"
    assert flag["metric"]["saturated_share"] == pytest.approx(1 / 3, abs=1e-4)
    assert flag["evidence"].startswith(f"process {PID}'s thread pool had every one of its 8")
    assert "1 of the 2 processes' pools saturated" in flag["evidence"]


def test_full_pool_whose_threads_all_idle_is_not_saturation(tmp_path: Path) -> None:
    spec = sleeping_stock_pool(healthy(), busy=0)
    assert flags_of(report_of(spec, tmp_path), "threadpool_saturation") == []


def short_rss(shape: list[float]) -> Spec:
    spec = healthy()
    spec.seconds = len(shape)
    spec.resources = resources(len(shape), shape)
    return spec


def test_memory_growth_in_a_25_second_session(tmp_path: Path) -> None:
    rnd = random.Random(11)
    spec = healthy()
    rss, level = [], 80.0
    for i in range(25):
        rss.append(level)  # sampled at T0 + i + 0.5, before this second's exports
        exports = rnd.choice((0, 1, 2, 3, 4)) if i >= 3 else 0  # 3 s of warm-up first
        spec.requests += [request("GET /export", T0 + i + 0.55 + j * 0.1, 30.0)
                          for j in range(exports)]
        level += exports * 0.1 + (2.0 if i < 3 else 0.0) + rnd.uniform(-0.03, 0.03)
    spec.seconds, spec.resources = 25, resources(25, rss)
    [flag] = flags_of(report_of(spec, tmp_path), "memory_growth")
    # found (a proportionate warm-up leaves 19 s to fit), but 18 intervals are too few to
    # name a route: chance correlations of a dozen routes reach a real leaker's
    assert flag["metric"]["span_seconds"] >= 18
    assert 4.0 < flag["metric"]["late_slope_mb_per_min"] < 20.0
    assert flag["severity"] == "low" and flag["route"] is None and flag["location"] is None
    assert "too short a session to tell which route" in flag["evidence"]


def test_short_growth_no_route_explains_is_low_at_most(tmp_path: Path) -> None:
    rnd = random.Random(11)
    # a 3 s warm-up, then 0.3 MB/s (18 MB/min): steady traffic, no route's count tracks it
    rss = [80 + min(i, 3) * 2.0 + max(0, i - 3) * 0.3 + rnd.uniform(-0.2, 0.2) for i in range(25)]
    [flag] = flags_of(report_of(short_rss(rss), tmp_path), "memory_growth")
    assert flag["severity"] == "low" and flag["route"] is None and flag["location"] is None
    assert 15.0 < flag["metric"]["late_slope_mb_per_min"] < 22.0


def test_warm_up_tailing_off_into_a_plateau_is_not_growth(tmp_path: Path) -> None:
    rnd = random.Random(12)
    # fills caches quickly, then more and more slowly: still rising after the warm-up prefix
    rss = [80 + 14 * (1 - math.exp(-i / 5)) + rnd.uniform(-0.1, 0.1) for i in range(25)]
    assert flags_of(report_of(short_rss(rss), tmp_path), "memory_growth") == []


def summary_on_loop(state: SampleState, per_window: int, requests_per_second: int) -> Spec:
    spec = healthy()
    spec.per_window.append(sample(LOOP_TID, on_loop(app("summary", 87)), per_window, state,
                                  gil=state is SampleState.RUNNING))
    spec.requests += [request("GET /reports/summary", T0 + i / requests_per_second, 40.0)
                      for i in range(30 * requests_per_second)]
    return spec


def test_sync_sleep_on_the_loop_is_flagged_under_the_share_floor(tmp_path: Path) -> None:
    # 30 ms off-CPU per request, 3% of the loop's samples: under the 5% share floor
    spec = summary_on_loop(SampleState.BLOCKED, per_window=3, requests_per_second=1)
    [flag] = flags_of(report_of(spec, tmp_path), "event_loop_blocked")
    assert flag["severity"] == "low" and flag["route"] == "GET /reports/summary"
    assert flag["location"]["line"] == 87
    assert flag["metric"]["stall_ms_per_request"] == 30.0


def test_short_loop_work_under_the_share_floor_is_not_flagged(tmp_path: Path) -> None:
    cpu = summary_on_loop(SampleState.RUNNING, per_window=3, requests_per_second=1)
    assert flags_of(report_of(cpu, tmp_path, "cpu"), "event_loop_blocked") == []
    brief = summary_on_loop(SampleState.BLOCKED, per_window=3, requests_per_second=30)
    assert flags_of(report_of(brief, tmp_path, "brief"), "event_loop_blocked") == []


def heavy_search(cpu_percent: float) -> Spec:
    """GET /search: 60 ms of the loop per request at one line, 1 request a second: a small
    share of a busy app's CPU."""
    spec = healthy()
    spec.routes = [*spec.routes, SEARCH]
    spec.per_window.append(sample(LOOP_TID, on_loop(app("search", 44)), 6, gil=True))
    spec.requests += [request("GET /search", T0 + i, 80.0) for i in range(30)]
    spec.resources = [replace(r, cpu_percent=cpu_percent) for r in spec.resources]
    return spec


def test_a_line_heavy_per_request_is_a_hotspot_at_a_small_share(tmp_path: Path) -> None:
    [flag] = flags_of(report_of(heavy_search(60.0), tmp_path), "cpu_hotspot")
    assert flag["severity"] == "low" and flag["route"] == "GET /search"
    assert flag["location"]["line"] == 44
    assert flag["metric"]["cpu_share"] < 0.25 and flag["metric"]["cpu_ms_per_request"] == 60.0






def test_a_single_thread_waiting_for_the_gil_is_a_victim_not_contention(
        tmp_path: Path) -> None:
    spec = healthy()
    spec.routes = [*spec.routes, SEARCH]
    # the loop's search waits for the GIL half the time: one thread, no flag of its own
    spec.per_window += [
        sample(LOOP_TID, on_loop(app("search", 44)), 20, SampleState.RUNNING, gil=True),
        sample(LOOP_TID, on_loop(app("search", 44)), 20, SampleState.BLOCKED, gil=False)]
    spec.per_window[5:9] = [
        sample(W1, on_worker(app("export", 136)), 100, SampleState.RUNNING, gil=True)]
    spec.requests += [request("GET /search", T0 + i, 80.0) for i in range(30)]
    assert flags_of(report_of(spec, tmp_path), "gil_contention") == []


def test_the_agents_own_work_is_tool_work_but_not_the_requests_it_wraps() -> None:
    agent = f"{TOOL_ROOTS[0]}/agent/middleware.py"
    middleware = Frame("AgentMiddleware.__call__", agent, 100)
    route = Frame("app", f"{SITE}/starlette/routing.py", 70)
    assert is_tool_work((*on_loop(middleware), Frame("build_tree", agent, 300)))
    assert is_tool_work((*on_loop(middleware), route, app("search", 44),
                         Frame("_sample", f"{SITE}/pyinstrument/stack_sampler.py", 198)))
    assert not is_tool_work((*on_loop(middleware), route, app("search", 44)))
    assert not is_tool_work((*on_loop(middleware), route))  # the framework's work


def test_the_agents_start_up_is_tool_work_on_whatever_stack_it_ran() -> None:
    # Injected as a pending call, the agent's start-up ran on top of a request being handled
    # on the main thread, and imported a third-party package from there.
    loader = Frame("main", f"{TOOL_ROOTS[0]}/inject/payload.py", 76)
    bootstrap = Frame("attach", "<apiscope-injected>/apiscope/agent/bootstrap.py", 55)
    request = (*on_loop(Frame("app", f"{SITE}/starlette/routing.py", 70)), app("search", 44))
    importing = Frame("_collect_parameters", f"{SITE}/typing_extensions.py", 3378)
    assert is_tool_work((*request, Frame("<module>", "<string>", 2), loader, bootstrap,
                         importing))
    assert is_tool_work((*request, Frame("<module>", "<string>", 2), loader, importing))
    assert not is_tool_work((*request, importing))


def test_the_agents_own_work_is_not_in_the_cpu_shares(tmp_path: Path) -> None:
    spec = healthy()
    agent = f"{TOOL_ROOTS[0]}/agent/profiling.py"
    spec.per_window.append(sample(LOOP_TID, on_loop(Frame("build_tree", agent, 300)), 50,
                                  gil=True))
    report = report_of(spec, tmp_path)
    read_item = next(e for e in report["endpoints"] if e["route"] == "GET /items/{item_id}")
    # read_item's 8 of the 100 running samples a window: the agent's 50 are the target's CPU
    # too (the denominator), but no endpoint's
    assert read_item["cpu_share"] == round(8 / 100, 4)
    assert sum(e["cpu_share"] for e in report["endpoints"]) == round(26 / 100, 4)
    assert report["flags"] == []






def test_threads_sleeping_never_on_cpu_are_not_a_cpu_line(tmp_path: Path) -> None:
    spec = healthy()
    spec.per_window[5:9] = [
        sample(t, on_worker(app("export", 133)), 70, SampleState.BLOCKED, gil=False)
        for t in (W1, W2, 10)]
    assert flags_of(report_of(spec, tmp_path), "gil_contention") == []


def test_contention_only_while_a_cache_fills_is_warm_up(tmp_path: Path) -> None:
    spec = healthy()
    # three threads computing results the app then caches: the first 5 s of 30 only
    spec.extra_windows = {i: [
        sample(W1, on_worker(app("export", 136)), 100, SampleState.RUNNING, gil=True),
        sample(W2, on_worker(app("export", 136)), 100, SampleState.BLOCKED, gil=False),
        sample(10, on_worker(app("export", 136)), 100, SampleState.BLOCKED, gil=False)]
        for i in range(5)}
    assert flags_of(report_of(spec, tmp_path), "gil_contention") == []


def test_short_cpu_runs_on_the_loop_are_its_job_short_waits_are_not(tmp_path: Path) -> None:
    # 10% of the loop's samples, 15 ms per request (10 samples a window, 7 requests a second):
    # computing that long is what async handlers do; waiting off-CPU that long is a defect
    cpu = summary_on_loop(SampleState.RUNNING, per_window=10, requests_per_second=7)
    cpu.resources = [replace(r, cpu_percent=100.0) for r in cpu.resources]  # not starved
    assert flags_of(report_of(cpu, tmp_path, "cpu"), "event_loop_blocked") == []
    sleep = summary_on_loop(SampleState.BLOCKED, per_window=10, requests_per_second=7)
    [flag] = flags_of(report_of(sleep, tmp_path, "sleep"), "event_loop_blocked")
    assert flag["severity"] == "low" and flag["route"] == "GET /reports/summary"
