"""Requests still running when the session ended: a hang is flagged where the requests waited,
judged against the route's own finished requests; long-by-design requests are not alarms."""

from __future__ import annotations

from pathlib import Path

from apiscope.model import Frame, UnfinishedRequest
from tests.analysis.builder import APP, PID, SITE, STD, T0, healthy, request
from tests.analysis.test_rules import flags_of, report_of

MIDDLEWARE = Frame("AgentMiddleware.__call__", f"{SITE}/apiscope/agent/middleware.py", 150)
DEPENDENCY = Frame("get_db", f"{APP}", 44)
ACQUIRE = (Frame("Pool.acquire", f"{SITE}/asyncpg/pool.py", 880),
           Frame("Queue.get", f"{STD}/asyncio/queues.py", 158))
HANDLER_WAIT = (Frame("solve_dependencies", f"{SITE}/fastapi/dependencies/utils.py", 600),
                DEPENDENCY, *ACQUIRE)


def stuck(route: str, seconds: float, chain: tuple[Frame, ...] = HANDLER_WAIT,
          thread: tuple[Frame, ...] = ()) -> UnfinishedRequest:
    method, template = route.split(" ", 1)
    return UnfinishedRequest(PID, T0 + 30, method, template, seconds * 1000.0,
                             "Future (pending)", (MIDDLEWARE, *chain), thread)


def test_requests_stuck_far_beyond_their_routes_p99_are_a_high_flag_where_they_waited(
        tmp_path: Path) -> None:
    spec = healthy()
    spec.unfinished = [stuck("GET /items/{item_id}", s) for s in (9.0, 6.5, 3.2)]
    [flag] = [f for f in flags_of(report_of(spec, tmp_path), "slow_endpoint")
              if f["route"] == "GET /items/{item_id}"]
    assert flag["severity"] == "high"
    assert flag["location"] == {"file": APP, "line": 44, "function": "get_db"}
    assert flag["metric"]["unfinished"] == 3 and flag["metric"]["unfinished_oldest_ms"] == 9000
    assert "still running with no response begun" in flag["evidence"]
    assert "in Pool.acquire()" in flag["evidence"] and "exhausted pool" in flag["suggestion"]


def test_one_stuck_request_is_low_and_a_thread_stack_locates_a_sync_handler(
        tmp_path: Path) -> None:
    spec = healthy()
    in_pool = (Frame("run", f"{SITE}/anyio/_backends/_asyncio.py", 967),
               Frame("create_item", APP, 24), Frame("acquire", f"{STD}/threading.py", 90))
    spec.unfinished = [stuck("POST /items", 12.0, chain=(Frame("run_sync", f"{SITE}/anyio/"
                                                               "to_thread.py", 56),),
                             thread=in_pool)]
    [flag] = flags_of(report_of(spec, tmp_path), "slow_endpoint")
    assert flag["severity"] == "low" and flag["route"] == "POST /items"
    assert flag["location"] == {"file": APP, "line": 24, "function": "create_item"}


def test_long_by_design_or_within_the_routes_own_tail_is_no_alarm(tmp_path: Path) -> None:
    spec = healthy()
    spec.unfinished = [
        # a long poll: its route finished nothing to compare with, however many wait
        *(stuck("GET /orders", 14.0, chain=(Frame("poll", APP, 112),)) for _ in range(5)),
        # as long as the route's own slow requests (p99 2.5 s): not stuck
        *(stuck("GET /export", 3.0) for _ in range(4)),
        # younger than the floor (2 s)
        *(stuck("GET /items/{item_id}", 1.5) for _ in range(4)),
        # a client still sending its body: the client's time
        *(stuck("POST /items", 20.0, chain=(
            Frame("Request.body", f"{SITE}/starlette/requests.py", 240),
            Frame("RequestResponseCycle.receive",
                  f"{SITE}/uvicorn/protocols/http/h11_impl.py", 530))) for _ in range(3)),
        # the same under hypercorn, whose receive is a queue's get: the body's reader says it
        *(stuck("POST /items", 20.0, chain=(
            Frame("Request.form", f"{SITE}/starlette/requests.py", 270),
            Frame("Queue.get", f"{STD}/asyncio/queues.py", 158))) for _ in range(3)),
    ]
    spec.requests = [r for r in spec.requests if r.route != "/orders"]
    spec.requests += [request("GET /export", T0 + i * 0.2, 2500.0 if i % 20 == 0 else 40.0)
                      for i in range(100)]
    report = report_of(spec, tmp_path, slo_ms=5000)
    flags = flags_of(report, "slow_endpoint")
    assert [(f["route"], f["severity"]) for f in flags] == [("GET /orders", "low")], flags
    assert "too few to tell" in flags[0]["evidence"]


def test_a_route_slow_at_p95_and_stuck_gets_one_flag(tmp_path: Path) -> None:
    spec = healthy()
    spec.requests += [request("GET /export", T0 + i * 0.2, 450.0) for i in range(40)]
    spec.unfinished = [stuck("GET /export", s) for s in (25.0, 24.0)]
    report = report_of(spec, tmp_path)
    [flag] = [f for f in flags_of(report, "slow_endpoint") if f["route"] == "GET /export"]
    assert flag["severity"] == "medium"  # p95 450 ms of a 200 ms objective is low alone
    assert "p95 450 ms" in flag["evidence"] and "2 requests of this route" in flag["evidence"]
    assert flag["location"]["line"] == 44 and flag["metric"]["p95_ms"] == 450.0
