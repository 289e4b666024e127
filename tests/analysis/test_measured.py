"""The rules on sessions where CPU time and the loop and GIL were measured, as the collector
records them now: the kernel's per-thread CPU time, the agent's loop and GIL watchdogs."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from apiscope.analysis.context import AnalysisContext, build_context, load_session
from apiscope.analysis.cpu import cpu_shares, server_cpu_shares, total_cpu_seconds
from apiscope.analysis.report import build_report, render_text
from apiscope.analysis.rules.event_loop_blocked import watched_seconds
from apiscope.analysis.thresholds import Thresholds
from apiscope.model import (
    Frame,
    GilSample,
    LoopLagSample,
    LoopStall,
    OffloadLooks,
    RouteInfo,
    SampleState,
    StackSample,
    ThreadRole,
    ThreadSpan,
)
from tests.analysis.builder import (
    APP,
    LOOP_BASE,
    LOOP_TID,
    PID,
    SELECT,
    SITE,
    STD,
    T0,
    W1,
    W2,
    WORKER_IDLE,
    Spec,
    app,
    healthy,
    idle_loop,
    on_loop,
    on_worker,
    request,
    resources,
    sample,
    write_and_open,
)

DJANGO = f"{SITE}/django/core/handlers/base.py"
PSYCOPG_WAIT = Frame("wait_c", f"{SITE}/psycopg/waiting.py", 280)
ARGON2 = Frame("hash_secret", f"{SITE}/argon2/low_level.py", 97)


def report_of(spec: Spec, tmp_path: Path) -> dict[str, Any]:
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        return build_report(reader).to_json()


def measured_healthy() -> Spec:
    """The popular FastAPI template's shape: sync routes whose pool threads wait on PostgreSQL
    (GIL released, off-CPU) and a login hashing with argon2 (C code, on-CPU)."""
    spec = healthy()
    spec.measured = True
    spec.per_window += [
        sample(W1, on_worker(app("list_orders", 114), PSYCOPG_WAIT), 40, SampleState.BLOCKED),
        sample(W2, on_worker(app("create_item", 24), ARGON2), 30),
    ]
    spec.loop_lag = [LoopLagSample(T0 + i + 1, PID, 40, 0.3, 2.0, 4.0) for i in range(30)]
    # The GIL watchdog waits little: the pool threads release the GIL in their waits and C code.
    spec.gil = [GilSample(T0 + i + 1, PID, 1.0, 0.01, 150, 1.5) for i in range(30)]
    return spec


def stall(line: int, duration_ms: float, cpu_ms: float, at: float,
          frames: tuple[Frame, ...] | None = None, held: str | None = None) -> LoopStall:
    stack = frames if frames is not None else on_loop(app("summary", line))
    return LoopStall(PID, LOOP_TID, at, duration_ms, stack, cpu_ms, held=held)


def test_measured_healthy_app_with_db_waits_and_hashing_gets_no_medium_or_high_flag(
        tmp_path: Path) -> None:
    report = report_of(measured_healthy(), tmp_path)
    assert [f for f in report["flags"] if f["severity"] != "low"] == []
    for flag in report["flags"]:
        assert flag["location"] is None or flag["location"]["file"] == APP
    assert not [f for f in report["flags"] if f["kind"] == "gil_contention"]


def test_cpu_share_rests_on_the_measured_cpu_time(tmp_path: Path) -> None:
    spec = measured_healthy()
    spec.extra_cpu = 0.1  # CPU of threads that were never sampled
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    running = 24 + 8 + 4 + 4 + 5 + 5 + 30  # RUNNING samples a window
    total = running / 100 + 0.1  # seconds of CPU a window
    # The orders route waits on PostgreSQL: only its 4 loop samples ran.
    assert shares["GET /orders"] == round(0.04 / total, 4)
    assert shares["POST /items"] == round(0.40 / total, 4)  # 10 + the 30 hashing
    [proc] = report["processes"]
    assert proc["server_cpu_share"] == round(0.24 / total, 4)  # the framework's own work
    assert proc["loop_lag_ms"] == {"p50": 0.3, "p99": 2.0}


DJANGO_THREAD = (Frame("_bootstrap", f"{STD}/threading.py", 995),
                 Frame("run", f"{STD}/concurrent/futures/thread.py", 59),
                 Frame("thread_handler", f"{SITE}/asgiref/sync.py", 635),
                 Frame("__call__", f"{SITE}/django/utils/deprecation.py", 310))
EVENT_QUERY = (Frame("__call__", "/srv/shop/shop/middleware.py", 101),
               Frame("execute", f"{SITE}/django/db/backends/utils.py", 79))


@pytest.mark.parametrize("served", [["GET /orders"], ["GET /orders", "POST /items"], []])
def test_a_thread_that_served_one_request_has_its_samples_charged_to_its_route(
        tmp_path: Path, served: list[str]) -> None:
    # Django's ASGI handler runs each request's sync code in a thread of its own. Sampled a
    # few times in its life, the thread showed only a middleware's query, no view: the agent
    # noted which requests' calls it ran. One route: its CPU; two within the window, or none
    # noted: no route's.
    spec = measured_healthy()
    tids = range(10, 16)
    spec.per_window += [sample(tid, (*DJANGO_THREAD, *EVENT_QUERY), 5) for tid in tids]
    spec.thread_spans = [ThreadSpan(PID, tid, endpoint, T0 + 0.2, T0 + 29.5, 30)
                         for tid in tids for endpoint in served]
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    total = (24 + 8 + 4 + 4 + 5 + 5 + 30 + 30) / 100  # CPU seconds a window
    ran = 0.34 if served == ["GET /orders"] else 0.04  # 4 on the loop, and the thread's 30
    assert shares["GET /orders"] == round(ran / total, 4)
    assert shares["POST /items"] == round(0.40 / total, 4)
    [proc] = report["processes"]
    assert proc["server_cpu_share"] == round(0.24 / total, 4)  # the framework's, as before


def test_a_handler_several_routes_share_has_its_cpu_shared_out_by_their_requests(
        tmp_path: Path) -> None:
    # An admin's generated CRUD: one `get` function serves every table's list, so no frame
    # tells the tables' routes apart. Its measured CPU is theirs, by the requests each served.
    spec = measured_healthy()
    listing = "/srv/shop/shop/crud.py"
    for template in ("/tables/movie/", "/tables/director/", "/tables/idle/"):
        spec.routes.append(RouteInfo("GET", template, "shop.crud:Wrapper.__init__.<locals>.get",
                                     listing, 40, True))
    spec.per_window.append(sample(LOOP_TID, on_loop(Frame("Wrapper.__init__.<locals>.get",
                                                          listing, 44)), 12))
    spec.requests += [request("GET /tables/movie/", T0 + i * 0.1, 5.0) for i in range(200)]
    spec.requests += [request("GET /tables/director/", T0 + i * 0.1, 5.0) for i in range(100)]
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    running = 24 + 8 + 4 + 4 + 5 + 5 + 30 + 12
    assert shares["GET /tables/movie/"] == round(0.08 / (running / 100), 4)
    assert shares["GET /tables/director/"] == round(0.04 / (running / 100), 4)
    assert "GET /tables/idle/" not in shares  # served no request: not in the report
    [proc] = report["processes"]
    assert proc["server_cpu_share"] == round(0.24 / (running / 100), 4)  # none of it the server's


def test_tasks_requests_started_have_their_cpu_shared_out_by_the_tasks_each_route_started(
        tmp_path: Path) -> None:
    # A LiteLLM proxy runs each completion in a task of its own, in short steps (no hold for
    # the loop watchdog to name): its stacks show no handler frame. The agent counted the
    # tasks each route's requests started running that function: 3 for POST /items to 1 for
    # GET /orders. The task's measured CPU is theirs in that proportion, not no one's.
    spec = measured_healthy()
    task = (*LOOP_BASE, Frame("_run", f"{STD}/asyncio/events.py", 80),
            app("complete", 300), Frame("encode", f"{SITE}/json/encoder.py", 200))
    spec.per_window.append(sample(LOOP_TID, task, 40))
    # A library's wrapper that runs every task of its task groups (anyio's) also runs the
    # app's background work, which no request started: its counts charge no stack to a route.
    wrapper = Frame("TaskHandle._run_coro", f"{SITE}/anyio/_core/_tasks.py", 327)
    spec.per_window.append(sample(LOOP_TID, (*task[:4], wrapper, app("refresh", 400)), 20))
    spec.requests += [request("POST /items", T0 + i * 0.1, 90.0) for i in range(200)]
    before = {e["route"]: e["cpu_share"] for e in report_of(spec, tmp_path)["endpoints"]}
    spec.meta = {"task_routes": [[APP, "complete", "POST /items", 30],
                                 [APP, "complete", "GET /orders", 10],
                                 [APP, "other", "GET /health", 5],
                                 [wrapper.file, wrapper.function, "POST /items", 50]]}
    report = report_of(spec, tmp_path / "b")
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    running = 24 + 8 + 4 + 4 + 5 + 5 + 30 + 40 + 20
    assert shares["POST /items"] - before["POST /items"] == pytest.approx(
        0.30 / (running / 100), abs=1e-4)
    assert shares["GET /orders"] - before.get("GET /orders", 0.0) == pytest.approx(
        0.10 / (running / 100), abs=1e-4)
    assert shares["GET /health"] == before["GET /health"]  # its function never ran here
    [proc] = report["processes"]
    assert proc["server_cpu_share"] == round(0.24 / (running / 100), 4)  # none of it moved


def test_a_task_the_request_started_has_its_cpu_and_its_hold_charged_to_the_route(
        tmp_path: Path) -> None:
    # `asyncio.gather(fetch_price(...), ...)` in a handler: the children run as tasks of their
    # own, their stacks show no handler frame. The loop watchdog named the route of their
    # holds from each task's context: their measured CPU is that route's, not no one's.
    spec = measured_healthy()
    task = (*LOOP_BASE, Frame("_run", f"{STD}/asyncio/events.py", 80),
            app("fetch_price", 263), Frame("__init__", f"{SITE}/httpx/_client.py", 1442))
    spec.per_window.append(sample(LOOP_TID, task, 50))
    spec.requests += [request("POST /items", T0 + i * 0.1, 90.0) for i in range(200)]
    spec.loop_stalls = [replace(stall(263, 120.0, 118.0, T0 + 5 + i, task), route="POST /items")
                        for i in range(20)]
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    running = 24 + 8 + 4 + 4 + 5 + 5 + 30 + 50
    assert shares["POST /items"] == round(0.90 / (running / 100), 4)  # 10 + 30 + the task's 50
    for kind in ("cpu_hotspot", "event_loop_blocked"):
        [flag] = [f for f in report["flags"] if f["kind"] == kind]
        assert flag["location"]["line"] == 263 and flag["route"] == "POST /items", kind
    # A coroutine that also ran for no request (a background refresh) names no route.
    spec.loop_stalls.append(stall(263, 120.0, 118.0, T0 + 26, task))
    shares = {e["route"]: e["cpu_share"]
              for e in report_of(spec, tmp_path / "b")["endpoints"]}
    assert shares["POST /items"] == round(0.40 / (running / 100), 4)


def _transport_line(text: str) -> int:
    import asyncio.selector_events as transports

    with open(transports.__file__) as source:
        return next(n for n, line in enumerate(source, 1) if text in line)


def test_a_compiled_database_protocols_work_on_the_loop_is_not_the_servers(
        tmp_path: Path) -> None:
    # asyncpg's protocol is Cython: py-spy sees the transport handing it the bytes, then only
    # what it calls (the transport's write, base64 in its authentication). That is the
    # requests' queries, not the server's HTTP work; uvicorn's Python protocol is the server's.
    import asyncio.selector_events as transports

    read = Frame("_SelectorSocketTransport._read_ready__data_received", transports.__file__,
                 _transport_line("self._protocol.data_received(data)"))
    recv = read._replace(line=_transport_line("data = self._sock.recv(self.max_size)"))
    reading = (*LOOP_BASE, Frame("Handle._run", f"{STD}/asyncio/events.py", 80), read)
    spec = measured_healthy()
    spec.per_window = [s for s in spec.per_window if s.frames != on_loop()]  # no other server
    spec.per_window += [
        sample(LOOP_TID, reading, 10),  # in the compiled protocol itself
        sample(LOOP_TID, (*reading, Frame("b64decode", f"{STD}/base64.py", 88)), 3),
        sample(LOOP_TID, (*reading, Frame("H11Protocol.data_received",
                                          f"{SITE}/uvicorn/protocols/http/h11_impl.py", 175)), 4),
        sample(LOOP_TID, (*LOOP_BASE, Frame("Handle._run", f"{STD}/asyncio/events.py", 80),
                          recv), 2),  # the socket's recv: either connection's
    ]
    report = report_of(spec, tmp_path)
    running = 8 + 4 + 4 + 5 + 5 + 30 + 10 + 3 + 4 + 2
    [proc] = report["processes"]
    assert proc["server_cpu_share"] == round(0.06 / (running / 100), 4)


@pytest.mark.parametrize(("looks", "timed"), [
    ({"POST /items": 3, "GET /orders": 1}, {}),  # an older agent's looks alone
    ({"POST /items": 1}, {"POST /items": 0.3, "GET /orders": 0.1}),  # the timed CPU decides
    ({}, {"POST /items": 0.6, "GET /orders": 0.2}),  # timed, no look ever caught it
    ({}, {})])
def test_work_handed_to_a_pool_is_its_routes_by_its_timed_cpu_or_the_agents_looks(
        tmp_path: Path, looks: dict[str, int], timed: dict[str, float]) -> None:
    # An async handler hands C code (bcrypt) to a pool thread: nothing of the app's on it.
    spec = measured_healthy()
    spec.extra_cpu = 0.1
    spec.per_window.append(sample(12, on_worker(), 20))
    spec.offloaded = [OffloadLooks(T0 + 5, PID, endpoint, looks.get(endpoint, 0),
                                   timed.get(endpoint, 0.0))
                      for endpoint in sorted(set(looks) | set(timed))]
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    total = (24 + 8 + 4 + 4 + 5 + 5 + 30 + 20) / 100 + 0.1
    offloaded = 0.20 if looks or timed else 0.0  # seconds a window, shared 3 : 1
    assert shares["POST /items"] == round((0.40 + 0.75 * offloaded) / total, 4)
    assert shares["GET /orders"] == round((0.04 + 0.25 * offloaded) / total, 4)
    [proc] = report["processes"]
    # Never the server's own work, named or not.
    assert proc["server_cpu_share"] == round(0.24 / total, 4)


def test_timed_handed_work_py_spy_mostly_missed_is_its_routes_not_the_servers(
        tmp_path: Path) -> None:
    # bcrypt in a pool thread, 50 ms a call: at the budget's rates py-spy sees the thread busy
    # now and then (the 20 samples of 0.2 s a window on an offloaded stack) and idle the rest,
    # and the rest of the thread's measured CPU lands on stacks that count as the server's
    # (the pool's idle one). The agent timed the calls by the thread's CPU clock: 0.33 s a
    # window for the route over the session's windows (30), more than py-spy saw.
    spec = measured_healthy()
    spec.extra_cpu = 0.1
    spec.per_window += [sample(12, on_worker(), 20), sample(12, WORKER_IDLE, 13)]
    windows = 30
    spec.offloaded = [OffloadLooks(T0 + 5, PID, "POST /items", 0, 0.33 * windows)]
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    total = (24 + 8 + 4 + 4 + 5 + 5 + 30 + 20 + 13) / 100 + 0.1
    assert shares["POST /items"] == round((0.40 + 0.33) / total, 4)
    assert shares["GET /orders"] == round(0.04 / total, 4)
    [proc] = report["processes"]
    # The 0.13 s a window timed beyond what was seen came off the pool's idle stack; the
    # loop's own work (0.24 s a window) stays the server's.
    assert proc["server_cpu_share"] == round(0.24 / total, 4)


@pytest.mark.parametrize("lanes", [True, False])
def test_cpu_of_threads_python_does_not_run_is_the_route_waiting_in_the_c_call(
        tmp_path: Path, lanes: bool) -> None:
    """argon2 with four lanes: its C library's own threads hash (0.3 s a window, in the
    process's CPU and no thread py-spy showed) while a pool thread of the route hashing waits
    for them in the call, off-CPU. That CPU is the route's; the orders route's thread, waiting
    on PostgreSQL meanwhile, takes none. With no route waiting in such a call, it is the
    process's native threads' figure alone."""
    spec = measured_healthy()
    spec.extra_cpu = 0.3
    if lanes:
        spec.per_window.append(sample(12, on_worker(app("create_item", 24), ARGON2), 20,
                                      SampleState.BLOCKED))
    report = report_of(spec, tmp_path)
    shares = {e["route"]: e["cpu_share"] for e in report["endpoints"]}
    total = (24 + 8 + 4 + 4 + 5 + 5 + 30) / 100 + 0.3
    assert shares["POST /items"] == round((0.40 + (0.3 if lanes else 0.0)) / total, 4)
    assert shares["GET /orders"] == round(0.04 / total, 4)
    [proc] = report["processes"]
    assert proc["native_cpu_share"] == round(0.3 / total, 4)
    assert proc["server_cpu_share"] == round(0.24 / total, 4)


@pytest.mark.parametrize("asleep", [False, True])
def test_a_line_the_kernel_found_asleep_is_no_hotspot_whatever_cpu_it_was_given(
        tmp_path: Path, asleep: bool) -> None:
    # A pool thread's measured CPU shared over its lines before the agent's looks had found
    # one of them asleep: that line got CPU its thread used elsewhere.
    spec = measured_healthy()
    spec.per_window.append(sample(W1, on_worker(app("list_orders", 116)), 60))
    if asleep:
        spec.meta["asleep_lines"] = [[APP, 116]]
    report = report_of(spec, tmp_path)
    hot = [f for f in report["flags"] if f["kind"] == "cpu_hotspot"
           and f["location"]["line"] == 116]
    assert bool(hot) is not asleep, report["flags"]


@pytest.mark.parametrize("holds", [0, 4, 20])
def test_a_loop_line_seen_in_few_samples_is_a_hotspot_on_its_held_passes_measured_cpu(
        tmp_path: Path, holds: int) -> None:
    # An async handler running 290 ms of Python a request: at the budget's low rates py-spy
    # caught its line 6 times in the session, under the 10 samples a line needs, while the
    # loop watchdog followed each of its passes to it and measured the loop thread's CPU.
    spec = measured_healthy()
    spec.extra_cpu = 0.2  # the passes' CPU, in the process's measured CPU
    summary = on_loop(app("summary", 88))
    spec.extra_windows = {i: [sample(LOOP_TID, summary, 2)] for i in (4, 12, 20)}
    spec.loop_stalls = [replace(stall(88, 300.0, 290.0, T0 + 5 + i, held="one"),
                                route="GET /reports/summary") for i in range(holds)]
    spec.requests += [request("GET /reports/summary", T0 + 5 + i, 300.0) for i in range(20)]
    report = report_of(spec, tmp_path)
    hot = [f for f in report["flags"] if f["kind"] == "cpu_hotspot"
           and f["location"]["line"] == 88]
    if holds < 5:  # a few samples, or a few passes: not enough to tell
        assert hot == [], hot
        return
    [flag] = hot
    assert flag["route"] == "GET /reports/summary"
    assert flag["metric"]["cpu_seconds"] == pytest.approx(20 * 0.29)
    assert flag["metric"]["cpu_ms_per_request"] == pytest.approx(290.0)
    assert "measured in the 20 passes it held the event loop" in flag["evidence"]


def test_hashing_in_a_library_is_named_and_never_above_low(tmp_path: Path) -> None:
    spec = measured_healthy()
    spec.per_window.append(sample(W1, on_worker(app("create_item", 24), ARGON2), 60))
    report = report_of(spec, tmp_path)
    hot = [f for f in report["flags"] if f["kind"] == "cpu_hotspot"]
    assert hot and all(f["severity"] == "low" for f in hot)
    assert "hash_secret()" in hot[0]["evidence"] and "library" in hot[0]["evidence"]
    assert hot[0]["location"]["line"] == 24


def test_a_sleep_on_the_loop_is_found_at_its_line_as_a_wait(tmp_path: Path) -> None:
    spec = measured_healthy()
    spec.loop_stalls = [stall(87, 120.0, 1.0, T0 + 5 + i * 0.5) for i in range(40)]
    spec.requests += [request("GET /reports/summary", T0 + 5 + i * 0.5, 125.0)
                      for i in range(40)]
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert flag["route"] == "GET /reports/summary"
    assert (flag["location"]["file"], flag["location"]["line"]) == (APP, 87)
    assert flag["metric"]["cause"] == "wait" and flag["metric"]["stalls"] == 40
    assert flag["severity"] == "medium"  # 4.8 s of 30 s: 16% of the loop
    assert "run_in_threadpool" in flag["suggestion"]
    assert "waiting off-CPU" in flag["evidence"]


def test_cpu_work_on_the_loop_is_told_from_a_sleep(tmp_path: Path) -> None:
    spec = measured_healthy()
    spec.loop_stalls = [stall(90, 60.0, 58.0, T0 + 5 + i * 0.5) for i in range(20)]
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert flag["metric"]["cause"] == "cpu" and flag["location"]["line"] == 90
    assert "running CPU work" in flag["evidence"]


def test_passes_the_garbage_collector_held_are_no_lines_fault(tmp_path: Path) -> None:
    # The same long passes, seen at one line, as in the test above: with the collector
    # running for most of each, the line is where an allocation set it off, not a hold.
    spec = measured_healthy()
    spec.loop_stalls = [stall(90, 60.0, 58.0, T0 + 5 + i * 0.5, held="gc") for i in range(20)]
    report = report_of(spec, tmp_path)
    assert not [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]


def short_holds(spec: Spec, seen: int, unseen: int, held: str = "one") -> None:
    """16 ms of CPU on the loop at line 90 on each of `seen + unseen` requests: the watchdog
    followed `seen` of those passes, the others it only timed."""
    spec.loop_stalls = [stall(90, 16.0, 15.5, T0 + 5 + i * 0.5, held=held) for i in range(seen)]
    spec.loop_stalls += [LoopStall(PID, LOOP_TID, T0 + 5.2 + i * 0.5, 16.0, (), None)
                         for i in range(unseen)]
    spec.requests += [request("GET /reports/summary", T0 + 5 + i * 0.25, 18.0)
                      for i in range(seen + unseen)]


def test_short_holds_by_one_task_count_in_full_with_those_not_seen(tmp_path: Path) -> None:
    # 40 holds of 16 ms in 30 s: 0.64 s, 2% of the loop; the watchdog saw 10 in the act.
    spec = measured_healthy()
    short_holds(spec, seen=10, unseen=30)
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert (flag["route"], flag["location"]["line"]) == ("GET /reports/summary", 90)
    assert flag["severity"] == "low" and flag["metric"]["cause"] == "cpu"
    assert flag["metric"]["stalls"] == 10
    assert abs(flag["metric"]["blocked_seconds"] - 0.64) < 1e-6
    assert abs(flag["metric"]["seen_seconds"] - 0.16) < 1e-6
    assert "about 40 times for 0.64 s" in flag["evidence"]


def test_a_short_pass_seen_once_or_busy_with_many_callbacks_is_no_hold(tmp_path: Path) -> None:
    for held in ("glimpse", "many", None):
        spec = measured_healthy()
        short_holds(spec, seen=10, unseen=30, held=held)  # type: ignore[arg-type]
        report = report_of(spec, tmp_path / str(held))
        assert not [f for f in report["flags"] if f["kind"] == "event_loop_blocked"], held


def test_passes_not_seen_are_shared_with_the_servers_own_work_too(tmp_path: Path) -> None:
    # Of the passes seen in the act, 9 in 10 were many callbacks of a busy loop: the unseen
    # ones are mostly that, and the handler's share stays under the floor.
    spec = measured_healthy()
    short_holds(spec, seen=3, unseen=30)
    spec.loop_stalls += [stall(0, 16.0, 15.0, T0 + 6 + i * 0.3, (), held="many")
                         for i in range(27)]
    (tmp_path / "s").mkdir()
    report = report_of(spec, tmp_path / "s")
    assert not [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]


def test_stalls_in_the_framework_alone_are_not_the_applications_fault(tmp_path: Path) -> None:
    spec = measured_healthy()
    framework = on_loop(Frame("<module>", "/srv/venv/bin/uvicorn", 8),
                        Frame("serialize", f"{SITE}/pydantic/main.py", 400))
    spec.loop_stalls = [stall(0, 80.0, 79.0, T0 + i, framework) for i in range(25)]
    report = report_of(spec, tmp_path)
    assert not [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]


@pytest.mark.parametrize(("dispatch", "advice"), [
    (Frame("get_response_async", DJANGO, 150), "await sync_to_async(...)(...) (from asgiref"),
    (Frame("full_dispatch_request", f"{SITE}/quart/app.py", 1410),
     "await run_sync(...)(...) (from quart.utils)"),
    (Frame("_handle_exception", f"{SITE}/falcon/asgi/app.py", 560),
     "await falcon.util.sync_to_async(...)"),
])
def test_advice_names_the_framework_serving_the_route(dispatch: Frame, advice: str,
                                                      tmp_path: Path) -> None:
    spec = measured_healthy()
    frames = (*on_loop(), dispatch, app("summary", 87))
    spec.loop_stalls = [stall(87, 100.0, 0.5, T0 + 5 + i, frames) for i in range(20)]
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert advice in flag["suggestion"]


def test_a_plain_def_handler_litestar_runs_on_the_loop_is_told_to_run_in_a_thread(
        tmp_path: Path) -> None:
    # Litestar runs a sync handler declared with sync_to_thread=False on the event loop: the
    # fix is the route's own option, not a call to wrap.
    spec = measured_healthy()
    spec.routes = [r if r.handler != "shop.main:summary" else replace(r, is_async=False)
                   for r in spec.routes]
    frames = (*on_loop(), Frame("handle", f"{SITE}/litestar/routes/http.py", 200),
              app("summary", 87))
    spec.loop_stalls = [stall(87, 100.0, 0.5, T0 + 5 + i, frames) for i in range(20)]
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert "sync_to_thread=True" in flag["suggestion"]
    # An async handler there gets the call to wrap.
    spec.routes = [replace(r, is_async=True) for r in spec.routes]
    (tmp_path / "async").mkdir()
    [flag] = [f for f in report_of(spec, tmp_path / "async")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert "await sync_to_thread(...) (from litestar.concurrency)" in flag["suggestion"]


def gil_spec(busy_threads: int, wait: float) -> Spec:
    """Pool threads running Python at line 25 while the event loop idles."""
    spec = healthy()
    spec.measured = True
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID] + [idle_loop(100)]
    for tid in (W1, W2)[:busy_threads]:  # each ran half the window, and waited at times
        spec.per_window.append(sample(tid, on_worker(app("create_item", 25)), 50))
        spec.per_window.append(sample(tid, on_worker(app("create_item", 25)), 30,
                                      SampleState.BLOCKED))
    spec.gil = [GilSample(T0 + i + 1, PID, 1.0, wait, 120, 6.0) for i in range(30)]
    return spec


def test_gil_contention_needs_a_measured_wait_and_two_busy_threads(tmp_path: Path) -> None:
    # 0.5 s of waits over 120 wake-ups a second: 4.2 ms each, most of the 5 ms switch interval
    report = report_of(gil_spec(2, 0.5), tmp_path / "a")
    [flag] = [f for f in report["flags"] if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25 and flag["metric"]["cause"] == "gil"
    assert flag["severity"] == "high" and abs(flag["metric"]["mean_wait_ms"] - 4.17) < 0.01
    # One busy thread makes the watchdog wait, but contends with no one.
    assert not [f for f in report_of(gil_spec(1, 0.5), tmp_path / "b")["flags"]
                if f["kind"] == "gil_contention"]
    # Two busy threads in C code that releases the GIL: the watchdog barely waits.
    assert not [f for f in report_of(gil_spec(2, 0.02), tmp_path / "c")["flags"]
                if f["kind"] == "gil_contention"]


def test_gil_contention_measured_by_the_kernels_looks(tmp_path: Path) -> None:
    # Two pool threads at line 25, each found blocked on the GIL at 45% of the looks: nearly
    # half their busy time went to waiting for the GIL. The watchdog's own waits are small
    # here; the looks are what counts.
    spec = gil_spec(2, 0.01)
    spec.gil_looks = {(PID, W1): (50, 22), (PID, W2): (50, 23)}
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25 and flag["metric"]["source"] == "kernel"
    # 0.9 s waited beside 1.1 s run (the threads run 0.55 s each a window)
    assert abs(flag["metric"]["gil_wait_share"] - 0.45) < 0.01 and flag["severity"] == "medium"
    assert "blocked on the GIL" in flag["evidence"]
    # The same threads that the looks found waiting on anything but the GIL: no flag, however
    # long the watchdog waited (one busy loop makes it wait too).
    spec = gil_spec(2, 0.5)
    spec.gil_looks = {(PID, W1): (50, 1), (PID, W2): (50, 0)}
    assert not [f for f in report_of(spec, tmp_path / "b")["flags"]
                if f["kind"] == "gil_contention"]


def holder_spec() -> Spec:
    """W1 renders at line 40 in short steps and waits for the GIL most of the time it shows;
    W2 computes at line 56, pure Python, and the kernel's looks rarely find it waiting: the
    waiter's line is where contention shows, the computing one is where it comes from."""
    spec = gil_spec(0, 0.01)
    spec.per_window.append(sample(W1, on_worker(app("render_page", 40)), 20))
    spec.per_window.append(sample(W1, on_worker(app("render_page", 40)), 60,
                                  SampleState.BLOCKED))
    spec.per_window.append(sample(W2, on_worker(app("forecast", 56)), 90))
    spec.per_window.append(sample(W2, on_worker(app("forecast", 56)), 4, SampleState.BLOCKED))
    spec.gil_looks = {(PID, W1): (50, 35), (PID, W2): (50, 2)}
    return spec


def test_gil_contention_is_located_at_the_thread_read_holding_the_gil(tmp_path: Path) -> None:
    # Without the holder read, the threads found waiting place the flag: the waiter's line.
    [before] = [f for f in report_of(holder_spec(), tmp_path / "a")["flags"]
                if f["kind"] == "gil_contention"]
    assert before["location"]["line"] == 40 and "holder_source" not in before["metric"]
    # Read from the interpreter at each look that found W1 waiting: W2 held the GIL at 30 of
    # 32 (an unnamed thread at the other 2). The flag goes to W2's line, as measured.
    spec = holder_spec()
    spec.gil_holders = {(PID, W2): 30, (PID, 0): 2}
    [flag] = [f for f in report_of(spec, tmp_path / "b")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 56 and flag["metric"]["holder_source"] == "interpreter"
    assert "the GIL was held by pool threads at 94%, other threads at 6% of those looks" \
        in flag["evidence"], flag["evidence"]
    assert "hottest Python of the pool threads holding it: forecast() at" in flag["evidence"]
    assert flag["metric"]["held_by_loop"] == 0.0
    assert flag["severity"] == before["severity"]  # the wait measured is graded as before


def test_a_holders_c_code_that_released_the_gil_does_not_place_the_flag(
        tmp_path: Path) -> None:
    # A login thread hashing with argon2 (line 25: it runs 40 times as long as it waits, the
    # GIL released in the hash) held the GIL at a quarter of the looks, around its hash; two
    # pool threads running a pure-Python forecast (line 56) take turns on the GIL with it and
    # each other. The hash's CPU, weighted by its thread's holds, outweighs the forecast's:
    # it is still not where the GIL was held.
    spec = gil_spec(0, 0.01)
    spec.per_window.append(sample(W1, on_worker(app("verify_password", 25)), 80))
    spec.per_window.append(sample(W1, on_worker(app("verify_password", 25)), 2,
                                  SampleState.BLOCKED))
    for tid in (W2, 10):
        spec.per_window.append(sample(tid, on_worker(app("forecast", 56)), 20))
        spec.per_window.append(sample(tid, on_worker(app("forecast", 56)), 30,
                                      SampleState.BLOCKED))
    spec.gil_looks = {(PID, W1): (50, 2), (PID, W2): (50, 30), (PID, 10): (50, 30)}
    spec.gil_holders = {(PID, W1): 10, (PID, W2): 15, (PID, 10): 15}
    [flag] = [f for f in report_of(spec, tmp_path)["flags"] if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 56, flag["evidence"]
    assert flag["metric"]["held_by_pool"] == 1.0


def test_too_few_holder_reads_leave_the_waiters_to_place_the_flag(tmp_path: Path) -> None:
    # A holder read at 10 looks over the whole session says too little (MIN_HOLDER_LOOKS).
    spec = holder_spec()
    spec.seconds = 10
    spec.gil_holders = {(PID, W2): 1}
    [flag] = [f for f in report_of(spec, tmp_path)["flags"] if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 40 and "holder_source" not in flag["metric"]


def test_a_holder_serving_no_requests_is_named_from_the_holder_reads(tmp_path: Path) -> None:
    # The GIL's holder is a thread of the app's own (a cache refresher, in short bursts: less
    # CPU than the waiting request thread shows), not a request thread. Without the holder
    # read the waiter's line places the flag; with it, the flag names the refresher and has
    # no route: the requests are its victims.
    spec = holder_spec()
    spec.per_window = [s for s in spec.per_window if s.tid != W2]
    refresh = (Frame("_bootstrap", f"{STD}/threading.py", 995), app("refresh_cache", 77))
    spec.per_window.append(sample(30, refresh, 15))
    spec.gil_looks = {(PID, W1): (50, 35), (PID, 30): (50, 2)}
    [before] = [f for f in report_of(spec, tmp_path / "a")["flags"]
                if f["kind"] == "gil_contention"]
    assert before["location"]["line"] == 40
    spec.gil_holders = {(PID, 30): 30}
    [flag] = [f for f in report_of(spec, tmp_path / "b")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 77 and flag["route"] is None
    assert "holder serves no requests: thread 'Thread-30' (30)" in flag["evidence"]
    assert abs(flag["metric"]["holder_cores"] - 0.15) < 0.01  # its CPU, as measured


def test_gil_waits_that_make_no_queue_for_the_cpu_the_process_used_are_no_contention(
        tmp_path: Path) -> None:
    # The two pool threads' waits (0.9 s a second between them) against the whole process's
    # CPU, threads too short-lived to be measured one by one included (its resource samples):
    # at 35% of a core, 2.6 threads waited for each core used, a queue for the GIL.
    spec = gil_spec(2, 0.01)
    spec.gil_looks = {(PID, W1): (50, 22), (PID, W2): (50, 23)}
    assert [f for f in report_of(spec, tmp_path / "a")["flags"] if f["kind"] == "gil_contention"]
    # At 2.5 cores (C code on the other threads) under half a thread waited for each: the
    # GIL was taken back now and then, no queue formed.
    spec.resources = [replace(r, cpu_percent=250.0) for r in spec.resources]
    assert not [f for f in report_of(spec, tmp_path / "b")["flags"]
                if f["kind"] == "gil_contention"]


def test_gil_contention_on_a_host_with_no_cpu_to_spare_is_low_and_says_so(
        tmp_path: Path) -> None:
    """On a host whose CPUs are all in use the GIL's holder is itself queued for a CPU, and the
    processes the advice would add would find none: the contention is still where it is
    (found, located), but low, and the evidence says why. With CPU to spare it is graded as
    measured. By the kernel's looks and by the watchdog alike."""
    looked = gil_spec(2, 0.01)
    looked.gil_looks = {(PID, W1): (50, 22), (PID, W2): (50, 23)}
    watched = gil_spec(2, 0.5)
    for name, spec in (("looked", looked), ("watched", watched)):
        spec.host_busy = 0.85
        [spare] = [f for f in report_of(spec, tmp_path / f"{name}-busy")["flags"]
                   if f["kind"] == "gil_contention"]
        spec.host_busy = 0.97
        [saturated] = [f for f in report_of(spec, tmp_path / f"{name}-saturated")["flags"]
                       if f["kind"] == "gil_contention"]
        assert spare["severity"] in ("medium", "high") and saturated["severity"] == "low"
        assert saturated["location"] == spare["location"]
        assert "97% in use" in saturated["evidence"] and "in use" not in spare["evidence"]
        assert saturated["metric"]["host_busy_share"] == 0.97


@pytest.mark.parametrize("handed", [{"POST /items": 9.0}, {"POST /items": 5.0, "GET /orders": 4.0}])
def test_pool_work_that_names_no_route_is_the_route_that_handed_the_pool_its_work(
        tmp_path: Path, handed: dict[str, float]) -> None:
    """A library's handler hands its work to the pool (Dagster's GraphQL server: resolvers
    run by `run_in_threadpool`), so no frame on the pool threads names a route. When the
    agent's timing says one endpoint handed the pool nearly all its work, the flags there are
    that route's; when several shared it, no route is guessed."""
    spec = gil_spec(2, 0.01)
    spec.gil_looks = {(PID, W1): (50, 22), (PID, W2): (50, 23)}
    spec.per_window = [s for s in spec.per_window if s.tid not in (W1, W2)]
    for tid in (W1, W2):
        spec.per_window.append(sample(tid, on_worker(app("resolve_fields", 240)), 50))
        spec.per_window.append(sample(tid, on_worker(app("resolve_fields", 240)), 30,
                                      SampleState.BLOCKED))
    spec.offloaded = [OffloadLooks(T0 + 5, PID, endpoint, 0, cpu)
                      for endpoint, cpu in handed.items()]
    flags = report_of(spec, tmp_path)["flags"]
    [gil] = [f for f in flags if f["kind"] == "gil_contention"]
    [hot] = [f for f in flags if f["kind"] == "cpu_hotspot"]
    assert gil["location"]["line"] == hot["location"]["line"] == 240
    route = "POST /items" if len(handed) == 1 else None
    assert gil["route"] == hot["route"] == route


def test_gil_contention_is_judged_over_seconds_not_windows(tmp_path: Path) -> None:
    # On a busy target the budget lengthens windows: a 15 s session in two 7.5 s windows. The
    # first began in the 3 s warm-up (a cache filling once may contend there) and is not
    # judged; the second is 7.5 s of measured contention, enough by itself.
    spec = gil_spec(2, 0.01)
    spec.seconds, spec.window = 15, 7.5
    spec.gil_looks = {(PID, W1): (150, 70), (PID, W2): (150, 68)}
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25 and flag["metric"]["contended_seconds"] == 7.5
    # One contended second after the warm-up is not a pattern.
    spec = gil_spec(2, 0.01)
    spec.seconds = 4
    spec.gil_looks = {(PID, W1): (25, 12), (PID, W2): (25, 11)}
    assert not [f for f in report_of(spec, tmp_path / "b")["flags"]
                if f["kind"] == "gil_contention"]


def contended_pool(loop_line: int | None) -> Spec:
    """Pool threads showing line 25 all along but running a tenth of that time (the rest they
    wait for the GIL: the looks found them on it at 80% of theirs); with `loop_line`, the
    event loop computing at that line meanwhile, never waiting for the GIL."""
    spec = gil_spec(0, 0.01)
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID]
    if loop_line is not None:
        spec.per_window.append(sample(LOOP_TID, on_loop(app("search", loop_line)), 80))
    else:
        spec.per_window.append(idle_loop(100))
    for tid in (W1, W2):
        spec.per_window.append(sample(tid, on_worker(app("create_item", 25)), 10))
        spec.per_window.append(sample(tid, on_worker(app("create_item", 25)), 90,
                                      SampleState.BLOCKED))
    spec.gil_looks = {(PID, W1): (50, 40), (PID, W2): (50, 42), (PID, LOOP_TID): (50, 0)}
    return spec


def test_gil_contention_is_located_in_the_python_that_contends(tmp_path: Path) -> None:
    # Pool threads in pure Python taking turns: their line is the contention, however little of
    # the time each thread gets the GIL (a sampler alone would say it runs a tenth of the time).
    # With the event loop computing meanwhile as well, still theirs: the loop's own work is
    # event_loop_blocked's and cpu_hotspot's.
    for name, loop_line in (("a", None), ("b", 40)):
        [flag] = [f for f in report_of(contended_pool(loop_line), tmp_path / name)["flags"]
                  if f["kind"] == "gil_contention"]
        assert flag["location"]["line"] == 25 and flag["metric"]["source"] == "kernel"
        assert flag["route"] == "POST /items"


def test_python_the_kernel_found_contending_is_the_location_whatever_its_few_samples_say(
        tmp_path: Path) -> None:
    # At the budget's rates a window holds a few samples a thread: two pool threads running a
    # pure-Python loop at line 25 happened to show it running three times as long as waiting
    # (which alone reads as C code that released the GIL), while the kernel found each of them
    # waiting for the GIL at 40% of its looks. Beside them the loop shows a line once running,
    # once waiting. The contention is line 25's, not that line's.
    spec = gil_spec(0, 0.01)
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID]
    spec.per_window += [idle_loop(98), sample(LOOP_TID, on_loop(app("search", 40)), 1),
                        sample(LOOP_TID, on_loop(app("search", 40)), 1, SampleState.BLOCKED)]
    for tid in (W1, W2):
        spec.per_window.append(sample(tid, on_worker(app("create_item", 25)), 30))
        spec.per_window.append(sample(tid, on_worker(app("create_item", 25)), 10,
                                      SampleState.BLOCKED))
    spec.gil_looks = {(PID, W1): (50, 20), (PID, W2): (50, 20), (PID, LOOP_TID): (50, 10)}
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25 and flag["route"] == "POST /items"
    # A thread hashing in C code (the GIL released) beside them, found waiting for the GIL
    # between its calls as often as they are, with more CPU than line 25: its samples show no
    # wait at all, so the hash is not where the GIL is contended.
    hashing = (Frame("login", APP, 61), Frame("verify", f"{SITE}/argon2/_password_hasher.py",
                                              200))
    spec.per_window.append(sample(12, on_worker(*hashing), 95))
    spec.gil_looks[(PID, 12)] = (50, 25)
    [flag] = [f for f in report_of(spec, tmp_path / "b")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25
    # argon2 with its lanes: the caller's samples now show waits, but each of them a wait for
    # the library's own threads (their CPU, 0.5 s a window, placed there), not for the GIL.
    spec.per_window[-1] = sample(12, on_worker(*hashing), 70)
    spec.per_window.append(sample(12, on_worker(*hashing), 25, SampleState.BLOCKED))
    spec.extra_cpu = 0.5
    [flag] = [f for f in report_of(spec, tmp_path / "c")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25


def test_c_code_that_releases_the_gil_is_not_where_it_is_contended(tmp_path: Path) -> None:
    # A password hash in C (the GIL released) runs on a CPU all the time it shows, in another
    # pool thread, with more CPU than the contending Python: the contention is still line 25's.
    spec = contended_pool(None)
    hashing = (Frame("login", APP, 61), Frame("verify", f"{SITE}/argon2/_password_hasher.py",
                                              200))
    spec.per_window.append(sample(12, on_worker(*hashing), 95))
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25
    # The hash's thread also waits for the GIL as each hash returns to Python (found on the
    # GIL at a fifth of its looks, which makes it one of the contending threads), and runs
    # more CPU than line 25 ever gets: it ran six times as long as it waited, beside the
    # holder, so it is still not where the GIL is contended.
    returning = contended_pool(None)
    returning.per_window.append(sample(12, on_worker(*hashing), 95))
    returning.per_window.append(sample(12, on_worker(*hashing), 15, SampleState.BLOCKED))
    returning.gil_looks[(PID, 12)] = (50, 10)
    [flag] = [f for f in report_of(returning, tmp_path / "r")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 25 and flag["route"] == "POST /items"
    # With the hash alone in the pool (the waits measured all the same): no line of the app
    # contends, so no flag names one.
    spec.per_window = [s for s in spec.per_window if s.tid not in (W1, W2)]
    assert not [f for f in report_of(spec, tmp_path / "b")["flags"]
                if f["kind"] == "gil_contention"]


def trending(background: bool) -> Spec:
    """The event loop running Python at line 12 and found waiting for the GIL at 40% of the
    kernel's looks; with `background`, a scheduler thread that serves no requests running
    Python at line 155 most of the time (a cache refresh beside the server)."""
    spec = gil_spec(0, 0.01)
    spec.per_window = [s for s in spec.per_window if s.tid != LOOP_TID]
    spec.per_window.append(sample(LOOP_TID, on_loop(app("read_item", 12)), 30))
    spec.per_window.append(sample(LOOP_TID, on_loop(app("read_item", 12)), 20,
                                  SampleState.BLOCKED))
    spec.gil_looks = {(PID, LOOP_TID): (50, 20)}
    if background:
        refresh = (Frame("_bootstrap", f"{STD}/threading.py", 995),
                   app("refresh_trending", 155))
        spec.per_window.append(sample(30, refresh, 60))
        spec.per_window.append(sample(30, refresh, 10, SampleState.BLOCKED))
        spec.gil_looks[(PID, 30)] = (50, 2)
    return spec


def test_gil_held_by_a_thread_that_serves_no_requests_is_located_there(tmp_path: Path) -> None:
    [flag] = [f for f in report_of(trending(True), tmp_path / "a")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 155 and flag["route"] is None
    assert "holder serves no requests: thread 'Thread-30' (30)" in flag["evidence"]
    assert flag["metric"]["holder_thread"] == "Thread-30"
    # Without that thread the loop's own Python is what contends.
    [flag] = [f for f in report_of(trending(False), tmp_path / "b")["flags"]
              if f["kind"] == "gil_contention"]
    assert flag["location"]["line"] == 12 and flag["route"] is not None


def test_no_flag_is_located_at_a_bin_script(tmp_path: Path) -> None:
    spec = measured_healthy()
    entry = Frame("<module>", "/srv/venv/bin/gunicorn", 8)
    spec.per_window.append(sample(LOOP_TID, (entry, *on_loop()), 60))
    report = report_of(spec, tmp_path)
    assert all("bin/" not in str((f["location"] or {}).get("file")) for f in report["flags"])


def slow_login(spec: Spec) -> Spec:
    """A login route at p95 300 ms, its CPU inside argon2 (W2: 30 samples a window)."""
    spec.requests += [request("POST /items", T0 + 10 + i * 0.1, 240.0 + (i % 20) * 4)
                      for i in range(150)]
    return spec


@pytest.mark.parametrize("lanes", [False, True])
def test_a_route_slow_from_library_work_it_makes_on_purpose_is_low(tmp_path: Path,
                                                                   lanes: bool) -> None:
    spec = measured_healthy()
    if lanes:  # argon2's own threads hash while the caller waits in the call, off-CPU
        spec.per_window = [s for s in spec.per_window if s.frames[-1] != ARGON2]
        spec.extra_cpu = 0.6
        spec.per_window.append(sample(W1, on_worker(app("create_item", 24), ARGON2), 60,
                                      SampleState.BLOCKED))
    else:
        spec.per_window.append(sample(W1, on_worker(app("create_item", 24), ARGON2), 60))
    report = report_of(slow_login(spec), tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "slow_endpoint"]
    assert flag["route"] == "POST /items" and flag["severity"] == "low"
    assert "hash_secret()" in flag["evidence"]
    assert flag["location"]["line"] == 24  # the slow call, not the decorator


def test_slowness_for_want_of_cpu_is_said_and_graded_low(tmp_path: Path) -> None:
    spec = measured_healthy()
    spec.requests += [request("GET /health", T0 + 10 + i * 0.1, 400.0) for i in range(100)]
    spec.runqueue = 0.0
    [busy] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "slow_endpoint"]
    assert busy["severity"] == "medium"
    spec.runqueue = 0.4  # each thread waited 0.4 s a window for a CPU
    report = report_of(spec, tmp_path / "b")
    [starved] = [f for f in report["flags"] if f["kind"] == "slow_endpoint"]
    assert starved["severity"] == "low" and "no CPU to spare" in starved["evidence"]
    assert report["processes"][0]["runqueue_share"] > 0.25
    spec.host_busy = 0.93  # measured: the host's CPUs were busy
    [starved] = [f for f in report_of(spec, tmp_path / "c")["flags"]
                 if f["kind"] == "slow_endpoint"]
    assert starved["severity"] == "low" and "CPUs 93% in use" in starved["evidence"]


def test_waiting_for_a_cpu_on_a_host_with_cpus_to_spare_is_not_want_of_cpu(
        tmp_path: Path) -> None:
    # A Django server (a thread per request, the GIL handed over all the time) on a host 57%
    # idle: its threads waited for a CPU 52-56% of the time they could run, each wake-up's
    # latency; the route is slow in its own code, and is not excused as the host's.
    spec = measured_healthy()
    spec.requests += [request("GET /health", T0 + 10 + i * 0.1, 400.0) for i in range(100)]
    spec.runqueue, spec.host_busy = 0.4, 0.43
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "slow_endpoint"]
    assert flag["severity"] == "medium" and "CPU to spare" not in flag["evidence"]
    assert report["processes"][0]["runqueue_share"] > 0.25  # measured, and still reported


def loop_flag(path: Path, line: int, cpu_ms: float, looks: dict[str, int],
              *called: Frame) -> dict[str, Any]:
    """The event_loop_blocked flag of 20 stalls of 60 ms at `line` (in the frames `called`
    from it), with the kernel's looks."""
    spec = measured_healthy()
    spec.loop_stalls = [LoopStall(PID, LOOP_TID, T0 + 5 + i, 60.0,
                                  on_loop(app("summary", line), *called), cpu_ms, looks)
                        for i in range(20)]
    [flag] = [f for f in report_of(spec, path)["flags"] if f["kind"] == "event_loop_blocked"]
    return flag


def test_the_kernels_looks_name_what_the_loop_waited_on(tmp_path: Path) -> None:
    # A sync query on the loop: the thread's CPU reads high on a busy host (it counts the
    # work around the stall), but at every look the kernel had it in a socket read.
    flag = loop_flag(tmp_path / "a", 88, 40.0, {"io": 4, "cpu": 1})
    assert flag["metric"]["cause"] == "wait" and "blocking I/O" in flag["evidence"]
    flag = loop_flag(tmp_path / "b", 90, 5.0, {"cpu": 4, "lock": 1})
    assert flag["metric"]["cause"] == "cpu" and "running CPU work" in flag["evidence"]
    assert "calling" not in flag["evidence"]  # the app's own line ran: no library call


def test_c_code_that_released_the_gil_on_the_loop_is_named_so(tmp_path: Path) -> None:
    # pbkdf2 on the loop: on a CPU at every look, and the watchdog took the GIL at once as it
    # woke for most of them ("nogil"): C code without the GIL, which a thread runs in parallel.
    flag = loop_flag(tmp_path / "a", 88, 58.0, {"nogil": 4, "cpu": 1})
    assert flag["metric"]["cause"] == "cpu" and flag["metric"]["gil_free_share"] == 0.8
    assert "C code that released the GIL" in flag["evidence"]
    assert "in parallel with the loop" in flag["suggestion"]
    assert "ProcessPoolExecutor" not in flag["suggestion"]
    # Python computing: the GIL found free at a look now and then, CPU work all the same.
    flag = loop_flag(tmp_path / "b", 88, 58.0, {"cpu": 3, "gil": 4, "nogil": 1})
    assert flag["metric"]["gil_free_share"] == 0.25 and "running CPU work" in flag["evidence"]
    # The looks that found it waiting for the GIL are its turns handed to the look itself:
    # running, all of them, not a wait of its own.
    assert "between two turns of the GIL, at 100% of the kernel's looks" in flag["evidence"]
    assert "GIL back" not in flag["evidence"]
    assert "ProcessPoolExecutor" in flag["suggestion"]


def test_c_code_on_its_own_threads_holding_the_loop_is_named_so(tmp_path: Path) -> None:
    """argon2 with its four lanes on the loop: the loop thread waits in the call on a futex
    (found "on a lock" at most looks) while the library's threads compute, 0.6 s a window.
    That is C code's CPU, not a wait for a lock, and a thread runs it beside the loop."""
    spec = measured_healthy()
    hashing = on_loop(app("summary", 88), ARGON2)
    spec.extra_cpu = 0.6
    spec.per_window.append(sample(LOOP_TID, hashing, 20, SampleState.BLOCKED))
    spec.loop_stalls = [LoopStall(PID, LOOP_TID, T0 + 5 + i, 60.0, hashing, 3.0,
                                  {"lock": 4, "cpu": 1}) for i in range(20)]
    [flag] = [f for f in report_of(spec, tmp_path)["flags"] if f["kind"] == "event_loop_blocked"]
    assert flag["location"]["line"] == 88
    assert flag["metric"]["cause"] == "cpu" and flag["metric"]["gil_free_share"] == 1.0
    assert flag["metric"]["native_cpu_seconds"] > 1.2  # of its 1.2 s of stalls
    assert "its library's own threads" in flag["evidence"]
    assert "in parallel with the loop" in flag["suggestion"]


def test_a_hold_part_running_part_waiting_names_both(tmp_path: Path) -> None:
    # A connection opened per call on the loop: the client hashes the password (C code, the
    # GIL released), then waits for the server's reply. The running looks are the majority;
    # the socket waits are named beside them.
    connect = (Frame("Connection.connect", f"{SITE}/psycopg/connection.py", 119),
               Frame("wait_conn", f"{SITE}/psycopg/waiting.py", 70))
    flag = loop_flag(tmp_path / "a", 88, 30.0, {"nogil": 5, "cpu": 1, "io": 4}, *connect)
    assert flag["metric"]["cause"] == "cpu" and "C code that released the GIL" in flag["evidence"]
    assert "of the kernel's looks, in blocking I/O on a file or socket at 40%;" in flag["evidence"]
    # The library call the line made is named: here, the driver's connect.
    assert "inside summary() at main.py:88 (calling Connection.connect())" in flag["evidence"]
    # A wait at one look in ten is a moment around the work, not a part of it.
    flag = loop_flag(tmp_path / "b", 88, 30.0, {"nogil": 8, "cpu": 1, "io": 1})
    assert "blocking I/O" not in flag["evidence"]


def test_looks_at_a_loop_waiting_for_a_cpu_count_for_neither_cause(tmp_path: Path) -> None:
    # A sync query on the loop of a busy host: some looks find the thread ready to run but
    # queued for a CPU; of the others, the socket read outnumbers the CPU work.
    flag = loop_flag(tmp_path / "a", 88, 8.0, {"queue": 3, "cpu": 1, "io": 5})
    assert flag["metric"]["cause"] == "wait" and "blocking I/O" in flag["evidence"]
    assert "waiting for a CPU at 33%" in flag["evidence"]
    # The queued third of each pass is the host's: 20 passes of 60 ms hold 0.8 s.
    assert "20 times for 0.80 s" in flag["evidence"]


def test_passes_the_loop_spent_mostly_waiting_for_a_cpu_are_the_hosts(tmp_path: Path) -> None:
    # An `await client.get(...)` line "holding" the loop on a host whose CPUs other processes
    # kept busy: at most looks the thread was ready to run, queued for a CPU.
    for name, looks in (("a", {"queue": 3, "cpu": 1}), ("b", {"queue": 4})):
        spec = measured_healthy()
        spec.loop_stalls = [LoopStall(PID, LOOP_TID, T0 + 5 + i, 60.0,
                                      on_loop(app("summary", 88)), 45.0, looks)
                            for i in range(20)]
        assert not [f for f in report_of(spec, tmp_path / name)["flags"]
                    if f["kind"] == "event_loop_blocked"]


def test_a_one_off_burst_with_a_small_tail_on_the_loop_is_a_warm_up(tmp_path: Path) -> None:
    # A search index built on the loop at its first use (a whole window), then kept up to date
    # with a little work in every window: a warm-up, not a hold that recurs.
    spec = measured_healthy()
    spec.seconds = 10
    spec.per_window.append(sample(LOOP_TID, on_loop(app("refresh_index", 31)), 1))
    spec.extra_windows = {3: [sample(LOOP_TID, on_loop(app("refresh_index", 31)), 100)]}
    flags = [f for f in report_of(spec, tmp_path / "a")["flags"]
             if f["kind"] == "event_loop_blocked"]
    assert flags == []
    # The same work in every window is a pattern, when only the samples can tell (no agent).
    spec.extra_windows = {}
    spec.per_window[-1] = sample(LOOP_TID, on_loop(app("refresh_index", 31)), 30)
    spec.loop_lag = []
    [flag] = [f for f in report_of(spec, tmp_path / "b")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert flag["location"]["line"] == 31


def test_code_outside_any_handler_on_a_watched_loop_is_the_watchdogs_to_judge(
        tmp_path: Path) -> None:
    # 30% of every window on the loop in a function no route's handler calls (a dependency,
    # a middleware), with no request count to divide it by: many short holds or a few long
    # ones? The agent's watchdog timed every pass of that loop and found none held: no flag.
    spec = measured_healthy()
    spec.seconds = 10
    spec.per_window.append(sample(LOOP_TID, on_loop(app("refresh_index", 31)), 30))
    assert [f for f in report_of(spec, tmp_path)["flags"]
            if f["kind"] == "event_loop_blocked"] == []



def test_an_unwatched_worker_of_a_watched_server_leaves_code_outside_handlers_to_the_watchdog(
        tmp_path: Path) -> None:
    # The same 30%, in a second worker whose agent never reported (recycled by gunicorn's
    # --max-requests before its first pull): it serves the same app as the watched one, whose
    # watchdog timed every pass and found none held. No flag either.
    other = PID + 1
    spec = measured_healthy()
    spec.seconds = 10
    spec.per_window.append(StackSample(other, LOOP_TID, "MainThread",
                                       on_loop(app("refresh_index", 31)), 30))
    spec.per_window.append(StackSample(other, LOOP_TID, "MainThread", SELECT, 70,
                                       SampleState.WAITING))
    roles = spec.roles()
    spec.roles = lambda: {**roles, (other, LOOP_TID): ThreadRole.LOOP}  # type: ignore
    assert [f for f in report_of(spec, tmp_path)["flags"]
            if f["kind"] == "event_loop_blocked"] == []


SERIALISING = on_loop(Frame("get_request_handler.<locals>.app", f"{SITE}/fastapi/routing.py",
                            458),
                      Frame("serialize_response", f"{SITE}/fastapi/routing.py", 358),
                      Frame("ModelField.serialize_json", f"{SITE}/fastapi/_compat/v2.py", 231),
                      Frame("TypeAdapter.dump_json", f"{SITE}/pydantic/type_adapter.py", 651))


def framework_stalls(route: str | None, held: str | None = "one") -> list[LoopStall]:
    """20 stalls of 40 ms in FastAPI's serialisation of a response, no line of the app on the
    stack, the request's route as the agent named it."""
    return [LoopStall(PID, LOOP_TID, T0 + 5 + i, 40.0, SERIALISING, 39.0, {"cpu": 4}, held,
                      route) for i in range(20)]


def test_a_hold_in_the_frameworks_work_for_a_route_is_that_routes(tmp_path: Path) -> None:
    # A route returning a large list: FastAPI validates and serialises it on the loop after
    # the handler returned. No line of the app runs, but the task that held the loop served
    # that route's request: the flag is the route's, located at its handler, and says whose
    # code ran.
    spec = measured_healthy()
    spec.loop_stalls = framework_stalls("GET /orders")
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert flag["route"] == "GET /orders"
    assert (flag["location"]["file"], flag["location"]["line"]) == (APP, 110)
    assert "in the framework's own work for GET /orders, no line of the app running" \
        in flag["evidence"]
    assert "fastapi's ModelField.serialize_json(), pydantic below it" in flag["evidence"]
    assert flag["metric"]["cause"] == "cpu" and flag["metric"]["framework_share"] == 1.0
    assert "paginate" in flag["suggestion"]
    # Without a route (a server's callback, or an older agent), or with a route the framework
    # serves itself, the same holds are the server's own work: no flag.
    for route, path in ((None, "b"), ("GET /openapi.json", "c")):
        spec = measured_healthy()
        spec.routes.append(RouteInfo("GET", "/openapi.json", "fastapi.applications:openapi",
                                     f"{SITE}/fastapi/applications.py", 1000, True))
        spec.loop_stalls = framework_stalls(route)
        assert not [f for f in report_of(spec, tmp_path / path)["flags"]
                    if f["kind"] == "event_loop_blocked"], route
    # Stalls of many callbacks named no one task, so no request: no route's either.
    spec = measured_healthy()
    spec.loop_stalls = framework_stalls("GET /orders", held="many")
    assert not [f for f in report_of(spec, tmp_path / "d")["flags"]
                if f["kind"] == "event_loop_blocked"]


def test_the_collectors_passes_during_a_routes_requests_count_when_it_holds_the_loop_too(
        tmp_path: Path) -> None:
    # Validating a large response builds thousands of objects, and the collector runs in the
    # middle of it: passes the collector held most of are that route's when the route holds
    # the loop by itself too, not when they are all it did (a collection may start in any
    # request's allocation).
    collected = [LoopStall(PID, LOOP_TID, T0 + 30 + i, 100.0, SERIALISING, 99.0, {"cpu": 2},
                           "gc", "GET /orders") for i in range(10)]
    spec = measured_healthy()
    spec.loop_stalls = framework_stalls("GET /orders")[:4] + collected
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert flag["route"] == "GET /orders"
    assert flag["metric"]["collector_seconds"] == pytest.approx(1.0)
    assert flag["metric"]["blocked_seconds"] == pytest.approx(1.16)
    assert "10 passes (1.00 s) during its requests in which the garbage collector ran most" \
        in flag["evidence"]
    spec = measured_healthy()
    spec.loop_stalls = collected
    assert not [f for f in report_of(spec, tmp_path / "b")["flags"]
                if f["kind"] == "event_loop_blocked"]


def test_passes_of_a_routes_requests_seen_only_at_their_send_count_for_it(
        tmp_path: Path) -> None:
    # A look takes the GIL where the loop thread lets it go: a computation followed by the
    # response's send is often seen only at the send. Such passes of a route's requests add
    # to the route's hold when it was seen in the act too, never make one by themselves, and
    # leave its location where its code was seen.
    sending = (*SERIALISING[:-3], Frame("_SelectorSocketTransport.write",
                                        f"{STD}/asyncio/selector_events.py", 1057))
    at_send = [LoopStall(PID, LOOP_TID, T0 + 30 + i, 40.0, sending, 39.0, {"cpu": 2}, "one",
                         "GET /reports/summary") for i in range(8)]
    seen = [replace(stall(88, 40.0, 39.0, T0 + 5 + i), route="GET /reports/summary")
            for i in range(2)]
    spec = measured_healthy()
    spec.loop_stalls = seen + at_send
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert flag["route"] == "GET /reports/summary" and flag["location"]["line"] == 88
    assert flag["metric"]["seen_at_io_seconds"] == pytest.approx(0.32)
    assert "8 passes (0.32 s) its requests held that the agent saw only as they sent" \
        in flag["evidence"]
    spec = measured_healthy()
    spec.loop_stalls = at_send + seen[:1]
    assert not [f for f in report_of(spec, tmp_path / "b")["flags"]
                if f["kind"] == "event_loop_blocked"]


def test_a_hold_in_app_code_outside_the_handlers_names_the_routes_it_held_for(
        tmp_path: Path) -> None:
    # A dependency checking a token with a sync call runs before the handler: no handler
    # frame on the stack. Its holds stay one group (every route that uses it pays), and the
    # routes the watchdog named say whose requests they were: the one route's, when only one
    # made them all.
    def holds(routes: list[str]) -> list[LoopStall]:
        return [replace(stall(200, 40.0, 1.0, T0 + 5 + i,
                              frames=on_loop(app("verify_token", 200))),
                        held="one", activity={"io": 3}, route=route)
                for i, route in enumerate(routes)]

    spec = measured_healthy()
    spec.loop_stalls = holds(["GET /orders"] * 10)
    [flag] = [f for f in report_of(spec, tmp_path / "a")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert flag["route"] == "GET /orders" and flag["location"]["line"] == 200
    assert "in the requests of" not in flag["evidence"]
    spec = measured_healthy()
    spec.loop_stalls = holds(["GET /orders"] * 6 + ["GET /reports/summary"] * 4)
    [flag] = [f for f in report_of(spec, tmp_path / "b")["flags"]
              if f["kind"] == "event_loop_blocked"]
    assert flag["route"] is None and flag["location"]["line"] == 200
    assert "in the requests of GET /orders (6), GET /reports/summary (4)" in flag["evidence"]


def test_the_loop_time_watched_is_each_workers_life_not_the_session_times_the_workers() -> None:
    """gunicorn's --max-requests: worker 2 lived the first 10 s of a 30 s session, worker 3
    (its successor) the last 20 s. A hold's share of the loops' time counts each over its own
    life: 30 + 10 + 20 s, not 3 x 30 s (which made every hold on a recycling server look a
    third as grave). A process whose agent reported no lag counts the whole session."""
    lags = [LoopLagSample(T0 + t, pid, 40, 0.3, 2.0, 4.0)
            for pid, times in ((1, range(1, 31)), (2, range(1, 11)), (3, range(11, 31)))
            for t in times]
    ctx = cast(AnalysisContext, SimpleNamespace(data=SimpleNamespace(seconds=30.0,
                                                                     loop_lag=lags)))
    assert watched_seconds(ctx, {1, 2, 3}) == pytest.approx(60.0)
    assert watched_seconds(ctx, {1, 9}) == pytest.approx(60.0)


def test_windows_sampled_without_the_kernels_reading_are_counted_in_the_report(
        tmp_path: Path) -> None:
    """A process sampled in a window the kernel's reading missed (a worker the sampler had not
    read: gunicorn's recycled workers were so before it read each window's workers) has its CPU
    estimated from the stacks: the report counts such windows instead of passing over them."""
    spec = measured_healthy()
    assert "windows_unmeasured" not in report_of(spec, tmp_path / "a")["samples"]
    spec.per_window.append(StackSample(PID + 1, PID + 1, "MainThread",
                                       on_loop(app("read_item", 12)), 5, SampleState.RUNNING))
    report = report_of(spec, tmp_path / "b")
    assert report["samples"]["windows_unmeasured"] == spec.seconds  # one a window, 1 s each
    with write_and_open(spec, tmp_path / "c.sqlite") as reader:
        assert "CPU not measured for 30 process window(s)" in render_text(build_report(reader))


ASGIREF = Frame("SyncToAsync.thread_handler", f"{SITE}/asgiref/sync.py", 522)
RENDER = (Frame("SimpleTemplateResponse.render", f"{SITE}/django/template/response.py", 114),
          Frame("Template.render", f"{SITE}/django/template/base.py", 171))


def test_a_requests_sync_code_in_its_own_thread_is_its_routes_not_the_servers(
        tmp_path: Path) -> None:
    # Django's ASGI handler runs each request's sync code in a thread of its own (asgiref), and
    # a TemplateResponse renders there after its view returned: no handler frame on the stack.
    def cpu(rendering: bool) -> tuple[dict[str, float], float]:
        """(CPU seconds of each route, of the server) over the session."""
        spec = measured_healthy()
        spec.per_window += [  # thread 10 ran one request of POST /items
            sample(10, on_worker(ASGIREF, app("create_item", 24)), 10),
            # thread 11 ran requests of two routes (a shared pool): which one rendered is unknown
            sample(11, on_worker(ASGIREF, app("create_item", 24)), 5),
            sample(11, on_worker(ASGIREF, app("list_orders", 114)), 5),
        ]
        if rendering:
            spec.per_window += [sample(10, on_worker(ASGIREF, *RENDER), 30),
                                sample(11, on_worker(ASGIREF, *RENDER), 20)]
        with write_and_open(spec, tmp_path / f"{rendering}.sqlite") as reader:
            ctx = build_context(load_session(reader), Thresholds())
        total = total_cpu_seconds(ctx)
        return ({route: share * total for route, share in cpu_shares(ctx).items()},
                server_cpu_shares(ctx)[PID] * total)

    (before, server_before), (after, server_after) = cpu(False), cpu(True)
    # thread 10's rendering, 0.3 s a window over 30 windows, is its one route's
    assert after["POST /items"] - before["POST /items"] == pytest.approx(9.0, rel=0.01)
    # thread 11's is no route's, and not the server's work either
    assert after["GET /orders"] == pytest.approx(before["GET /orders"], rel=0.01)
    assert server_after == pytest.approx(server_before, rel=0.01)


def test_a_routes_handler_in_a_library_is_the_routes_cpu_not_also_the_servers(
        tmp_path: Path) -> None:
    # A CMS's page view lives in site-packages: its samples are the route's, and were counted
    # the server's as well (a Wagtail site read 93% server and 20% routes).
    serve = Frame("serve", f"{SITE}/wagtail/views.py", 25)

    def cpu(serving: bool) -> tuple[float, float]:
        """CPU seconds of the route, of the server."""
        spec = measured_healthy()
        spec.routes = [*spec.routes,
                       RouteInfo("GET", "/{}", "wagtail.views:serve", serve.file, 19, False)]
        spec.requests += [request("GET /{}", T0 + 10 + i * 0.1, 40.0) for i in range(100)]
        if serving:
            spec.per_window.append(sample(10, on_worker(serve), 50))
        with write_and_open(spec, tmp_path / f"{serving}.sqlite") as reader:
            ctx = build_context(load_session(reader), Thresholds())
        total = total_cpu_seconds(ctx)
        return (cpu_shares(ctx).get("GET /{}", 0.0) * total,
                server_cpu_shares(ctx)[PID] * total)

    (_, server_before), (route, server_after) = cpu(False), cpu(True)
    assert route == pytest.approx(15.0, rel=0.01)  # 0.5 s a window, 30 windows
    assert server_after == pytest.approx(server_before, rel=0.01)


def test_a_handler_seen_off_cpu_on_the_loop_once_is_no_blocking_call(tmp_path: Path) -> None:
    # A Prefect route's `pendulum.now()` (6 us) was caught off-CPU by one sample at 2 Hz: half
    # a second of "waiting", 14 ms a request over its few requests, flagged as a blocking call.
    def flags(blocked_windows: tuple[int, ...]) -> list[dict[str, Any]]:
        spec = measured_healthy()
        spec.requests += [request("GET /reports/summary", T0 + 1 + i * 0.7, 30.0)
                          for i in range(40)]
        spec.per_window.append(sample(LOOP_TID, on_loop(app("summary", 84)), 1))
        spec.extra_windows = {w: [sample(LOOP_TID, on_loop(app("summary", 88)), 50,
                                         SampleState.BLOCKED)] for w in blocked_windows}
        # the window with most of the route's loop time (left out as a possible one-off)
        spec.extra_windows[2] = [sample(LOOP_TID, on_loop(app("summary", 84)), 60)]
        report = report_of(spec, tmp_path / "-".join(map(str, blocked_windows)))
        return [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]

    assert flags((5,)) == []
    [flag] = flags((5, 12, 20, 27))  # off-CPU there again and again: a pattern
    assert flag["route"] == "GET /reports/summary" and flag["location"]["line"] == 88


def test_a_greenlets_stack_on_the_loop_thread_is_not_the_servers_work(tmp_path: Path) -> None:
    # SQLAlchemy's asyncio ORM runs a query's sync half in a greenlet: on the loop thread, a
    # stack with no loop under it (a third of a Prefect server's CPU, read as the server's).
    greenlet = (Frame("Session.execute", f"{SITE}/sqlalchemy/orm/session.py", 2351),
                Frame("compile", f"{SITE}/sqlalchemy/sql/elements.py", 309))

    def server_cpu(with_greenlet: bool) -> float:
        spec = measured_healthy()
        if with_greenlet:
            spec.per_window.append(sample(LOOP_TID, greenlet, 30))
        with write_and_open(spec, tmp_path / f"{with_greenlet}.sqlite") as reader:
            ctx = build_context(load_session(reader), Thresholds())
        return server_cpu_shares(ctx)[PID] * total_cpu_seconds(ctx)

    assert server_cpu(True) == pytest.approx(server_cpu(False), rel=0.01)


def test_the_garbage_collectors_passes_of_the_loop_are_reported_not_flagged(
        tmp_path: Path) -> None:
    # A Prefect server's full collections held its loop 250-420 ms every 11-17 s: no line's
    # fault, and what its health checks' p99 was made of.
    spec = measured_healthy()
    spec.loop_stalls = [stall(84, ms, ms * 0.95, T0 + 3 + 12 * i, held="gc")
                        for i, ms in enumerate((265.0, 252.0, 340.0))]
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        report = build_report(reader)
    data = report.to_json()
    assert data["processes"][0]["loop_gc_pauses"] == {"count": 3, "seconds": 0.857,
                                                      "longest_ms": 340.0}
    assert not [f for f in data["flags"] if f["kind"] == "event_loop_blocked"]
    assert (f"pid {PID}: the garbage collector held the event loop 3 times, 0.86 s in all"
            " (longest 340 ms)") in render_text(report)
    # The dashboard's process card says the same.
    from apiscope.dashboard.components import process_cards
    from apiscope.dashboard.data import DashboardSession

    dashboard = DashboardSession(tmp_path / "s.sqlite")
    try:
        [card] = [c for c in dashboard.process_cards() if c.pid == PID]
    finally:
        dashboard.close()
    assert card.gc_pauses is not None
    assert card.gc_pauses.to_json() == data["processes"][0]["loop_gc_pauses"]
    shown = str(process_cards([card]))
    assert "held the loop 3 times, 0.86 s (longest 340 ms)" in shown
    assert report_of(measured_healthy(), tmp_path / "b")["processes"][0]["loop_gc_pauses"] \
        is None


def test_the_text_report_gives_the_rate_the_budget_allowed(tmp_path: Path) -> None:
    # It read "691 stack samples at 100 Hz" where the budget had sampled at 2-5 Hz.
    with write_and_open(measured_healthy(), tmp_path / "s.sqlite") as reader:
        report = build_report(reader)
    assert "stack samples at 100 Hz," in render_text(report)  # as asked: no budget cut it
    cut = replace(report, samples=replace(report.samples, effective_rate_hz=4.4,
                                          max_overhead_percent=2.0, overhead_percent=3.064))
    assert ("stack samples at 4.4 Hz on average (100 Hz asked, cost 3.1% against a 2% budget)"
            in render_text(cut))
    parted = replace(cut, samples=replace(cut.samples, overhead_parts={
        "pyspy_startup": 0.2, "pyspy_samples": 1.4, "agent": 0.8, "collector": 0.66}))
    assert ("(100 Hz asked, cost 3.1% against a 2% budget: py-spy start-ups 0.2%, py-spy"
            " samples 1.4%, agent 0.8%, collector 0.7%)") in render_text(parted)
    assert parted.samples.to_json()["overhead_parts"]["collector"] == 0.66
    assert type(parted.samples).from_json(parted.samples.to_json()) == parted.samples
    assert "overhead_parts" not in cut.samples.to_json()  # not measured: left out


BENTO = f"{SITE}/_bentoml_impl/server/app.py"
SERVICE = "/srv/bento/service.py"
WRAPPER = Frame("ServiceAppFactory.api_endpoint_wrapper", BENTO, 719)


def bento_shaped() -> Spec:
    """BentoML's shape: every API of the user's service served by one installed handler
    (`api_endpoint_wrapper`) that calls the service's method; `proba` async on the loop,
    `predict` sync in a pool thread, timed by the agent; BentoML's own middleware (tracing,
    access logs) on the loop for every request."""
    spec = measured_healthy()
    spec.routes = [RouteInfo("POST", f"/{name}", "_bentoml_impl.server.app:"
                             "ServiceAppFactory.api_endpoint_wrapper", BENTO, 715, True)
                   for name in ("proba", "predict", "keywords")]
    spec.requests = [request(f"POST /{name}", T0 + 1 + i * 0.05, 20.0)
                     for i in range(200) for name in ("proba", "predict", "keywords")]
    proba = on_loop(WRAPPER, Frame("Classifier.proba", SERVICE, 24),
                    Frame("predict_proba", f"{SITE}/sklearn/ensemble/_forest.py", 956))
    middleware = on_loop(Frame("Tracer.start_span", f"{SITE}/opentelemetry/trace.py", 1150))
    spec.per_window += [sample(LOOP_TID, proba, 20), sample(LOOP_TID, middleware, 30),
                        sample(W1, on_worker(Frame("Classifier.predict", SERVICE, 18)), 10)]
    spec.offloaded = [OffloadLooks(T0 + 1 + i, PID, "POST /predict", 10, 0.3)
                      for i in range(spec.seconds)]
    return spec


def bento_labelled() -> Spec:
    """`bento_shaped`, with three holds of the loop the agent saw in the async API's method,
    named with their request's route."""
    spec = bento_shaped()
    spec.loop_stalls = [replace(stall(0, 40.0, 38.0, T0 + 2 + i,
                                      frames=spec.per_window[-3].frames, held="one"),
                                route="POST /proba") for i in range(3)]
    return spec


def test_a_serving_frameworks_one_handler_is_told_apart_by_the_service_method_below(
        tmp_path: Path) -> None:
    # The agent's holds of the loop name the request's route: `Classifier.proba` ran for
    # POST /proba, so its samples are that route's, not shared out among the three by
    # their requests (0.088 for a route with 0.19 of the CPU).
    spec = bento_labelled()
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        ctx = build_context(load_session(reader), Thresholds())
    shares = cpu_shares(ctx)
    total = total_cpu_seconds(ctx)
    proba = 0.2 * spec.seconds  # 20 samples at 100 Hz a window
    assert shares["POST /proba"] * total == pytest.approx(proba, rel=0.01)
    assert shares.get("POST /keywords", 0.0) * total == pytest.approx(0.0, abs=0.01)
    # Without the labels, nothing tells them apart: shared out by requests, as before.
    spec.loop_stalls = []
    with write_and_open(spec, tmp_path / "t.sqlite") as reader:
        ctx = build_context(load_session(reader), Thresholds())
    assert cpu_shares(ctx)["POST /keywords"] * total == pytest.approx(proba / 3, rel=0.01)


def test_the_loops_own_work_stays_the_servers_beside_timed_calls_of_the_apps_functions(
        tmp_path: Path) -> None:
    # The timed CPU of calls handed to the pool that py-spy saw in the app's own function
    # (not on an offloaded stack) was taken from the loop's framework work: a BentoML worker
    # whose loop spent 9 s in tracing and access logs read a server share of 0.
    # BentoML's own work in its wrapper after the service's method returned (serialising the
    # answer) is the APIs', shared out by their requests, not also the server's.
    spec = bento_shaped()
    serde = on_loop(WRAPPER, Frame("JSONSerde.serialize", f"{SITE}/_bentoml_sdk/serde.py", 90))
    spec.per_window.append(sample(LOOP_TID, serde, 12))
    with write_and_open(spec, tmp_path / "s.sqlite") as reader:
        ctx = build_context(load_session(reader), Thresholds())
    total = total_cpu_seconds(ctx)
    # The framework's 24 samples a window on the loop and the middleware's 30, 30 windows.
    assert server_cpu_shares(ctx)[PID] * total == pytest.approx((0.24 + 0.30) * 30, rel=0.01)
    # With no labelled stacks here, the service's method (20 samples a window) is shared too.
    shares = cpu_shares(ctx)
    assert shares["POST /keywords"] * total == pytest.approx((0.12 + 0.20) * 30 / 3, rel=0.01)


@pytest.mark.parametrize("watched", [True, False])
def test_a_routes_cpu_in_short_steps_on_a_watched_loop_is_no_hold(
        tmp_path: Path, watched: bool) -> None:
    # Jupyverse lists a directory in async code, 29 ms of CPU a request in many steps between
    # awaits: a third of the loop's samples in its handler, the watchdog timing every pass and
    # finding none that held the loop (its lag p50 0 ms). Read as a high hold. Without the
    # watchdog the samples cannot tell short passes from long ones and say what they see.
    spec = measured_healthy()
    spec.requests += [request("GET /reports/summary", T0 + 1 + i * 0.1, 60.0)
                      for i in range(280)]
    spec.per_window.append(sample(LOOP_TID, on_loop(app("summary", 84)), 40))
    if not watched:
        spec.loop_lag = []
    report = report_of(spec, tmp_path)
    blocked = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert [f["severity"] for f in blocked] == ([] if watched else ["high"])


def test_short_sync_waits_on_a_watched_loop_are_still_blocking(tmp_path: Path) -> None:
    # Off the CPU on the loop in every request (a quick sync query): blocking however short.
    spec = measured_healthy()
    spec.requests += [request("GET /reports/summary", T0 + 1 + i * 0.1, 60.0)
                      for i in range(280)]
    spec.per_window.append(sample(LOOP_TID, on_loop(app("summary", 88), PSYCOPG_WAIT), 40,
                                  SampleState.BLOCKED))
    report = report_of(spec, tmp_path)
    [flag] = [f for f in report["flags"] if f["kind"] == "event_loop_blocked"]
    assert flag["location"]["line"] == 88 and flag["metric"]["cause"] == "wait"


def test_a_process_that_used_next_to_no_cpu_has_its_cpu_split_in_no_shares(
        tmp_path: Path) -> None:
    # A worker stuck in its start-up for the whole session: the kernel counts a process's time
    # in clock ticks, its threads' in nanoseconds, and one tick beyond its idle thread read as
    # "native CPU 100%". Too little to split says nothing.
    spec = Spec(seconds=30, measured=True, per_window=[idle_loop(100)], extra_cpu=0.01 / 30)
    spec.requests = [request("GET /health", T0 + 1, 2.0)]
    spec.resources = resources(30, [80.0] * 30)
    [proc] = report_of(spec, tmp_path)["processes"]
    assert proc["native_cpu_share"] is None and proc["server_cpu_share"] is None
    spec.extra_cpu = 0.3 / 30  # enough to tell: all of it beyond the threads read
    [proc] = report_of(spec, tmp_path / "b")["processes"]
    assert proc["native_cpu_share"] == 1.0
