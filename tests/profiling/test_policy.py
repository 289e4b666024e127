"""Which requests the agent profiles: 1 in N per route, slow requests, the caps."""

from __future__ import annotations

import asyncio
import sys
from collections import deque
from pathlib import Path
from types import FrameType
from typing import Any

import pytest

from apiscope.agent.profiling import (
    ProfilingOptions,
    RequestProfiling,
    options_from_env,
    template_pattern,
)
from tests.profiling.trees import all_nodes
from tests.support import FakeClock


class FakeProfiler:
    """Stands for a request's slices: one, sampled when the budget allows, costing
    `spent_each` seconds sampled and nothing timed only (as `SliceProfiler` charges them)."""

    spent_each = 0.0
    timed_each = 0.0  # a timed-only profile's bookkeeping

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.budget: Any = None
        self.spent = self.timed_spent = 0.0
        self.sampled = False

    def run(self) -> None:
        self.sampled = self.budget is None or self.budget.allows()
        self.spent = self.spent_each if self.sampled else self.timed_each
        self.timed_spent = 0.0 if self.sampled else self.spent
        if self.budget is not None:
            self.budget.spend(self.spent)


def profiling(clock: FakeClock, **options: Any) -> RequestProfiling:
    return RequestProfiling(deque(), ProfilingOptions(**options), clock=clock,
                            profiler_factory=FakeProfiler, cpu_clock=clock)


def serve(p: RequestProfiling, method: str, path: str, route: str, ms: float = 5.0) -> bool:
    """One request through the decision points the middleware calls; True when profiled."""
    run = p.admit(method, path) if p.armed else None
    if run is not None:
        run.profiler.run()
        run.records = []
        p.finish(run, 0.0, method, route, ms)
    p.observe(method, route, ms)
    return run is not None


def test_one_in_n_per_route() -> None:
    p = profiling(FakeClock(), every=5, max_per_second=1000)
    a = [serve(p, "GET", f"/items/{i}", "/items/{item_id}") for i in range(50)]
    b = [serve(p, "GET", "/health", "/health") for _ in range(50)]
    # the 5th request arms its route, the 6th is profiled; then every 5th after that
    assert sum(a) == sum(b) == 9
    assert a.index(True) == 5 and b.index(True) == 5
    assert len(p.profiles) == 18 and p.profiled == 18


def test_a_busy_route_does_not_arm_another() -> None:
    p = profiling(FakeClock(), every=3, max_per_second=1000)
    for _ in range(3):
        serve(p, "GET", "/items/1", "/items/{item_id}")
    assert not serve(p, "GET", "/health", "/health")  # /items is armed, /health is not
    assert not serve(p, "POST", "/items/1", "/items/{item_id}")  # nor another method
    assert serve(p, "GET", "/items/7", "/items/{item_id}")


def test_a_slow_request_arms_its_route_at_most_once_a_second() -> None:
    clock = FakeClock()
    p = profiling(clock, every=1000, slow_ms=100, max_per_second=1000)
    assert not serve(p, "GET", "/q/1", "/q/{id}", ms=150)
    assert serve(p, "GET", "/q/2", "/q/{id}", ms=150)  # the next request of that route
    assert not serve(p, "GET", "/q/3", "/q/{id}", ms=150)  # slow again, but within a second
    clock.now += 1.0
    assert not serve(p, "GET", "/q/4", "/q/{id}", ms=150)
    assert serve(p, "GET", "/q/5", "/q/{id}", ms=20)
    assert not serve(p, "GET", "/q/6", "/q/{id}", ms=20)  # fast: not armed


def test_global_rate_cap() -> None:
    clock = FakeClock()
    p = profiling(clock, every=1, max_per_second=2)
    profiled = [serve(p, "GET", "/a", "/a") for _ in range(20)]
    assert sum(profiled) == 2 and p.capped > 0  # a burst of one second's worth
    clock.now += 0.5  # half a second buys one more
    assert sum(serve(p, "GET", "/a", "/a") for _ in range(20)) == 1
    clock.now += 10.0  # the burst is capped at the rate, whatever the idle time
    assert sum(serve(p, "GET", "/a", "/a") for _ in range(20)) == 2


def sampled(p: RequestProfiling, route: str, n: int) -> list[bool | None]:
    """n requests of `route`: for each, None unprofiled, else whether its slices were sampled."""
    out: list[bool | None] = []
    for _ in range(n):
        run = p.admit("GET", route) if p.armed else None
        if run is not None:
            run.profiler.run()
            run.records = []
            p.finish(run, 0.0, "GET", route, 5.0)
        p.observe("GET", route, 5.0)
        out.append(None if run is None else run.profiler.sampled)
    return out


def test_sampling_stays_within_its_share_of_the_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    # Requests that each run 50 ms sampled, 2 % of the time to spend: the budget saves up 5 s'
    # worth (0.1 s); then 20 ms a second pay for one such request every 2.5 s.
    monkeypatch.setattr(FakeProfiler, "spent_each", 0.05)
    clock = FakeClock()
    p = profiling(clock, every=1, max_per_second=1000, max_share=0.02)
    first = sampled(p, "/a", 8)
    # Sampled while the balance lasts, then timed only (an await still shows).
    assert first == [None, True, True] + [False] * 5
    assert p.spent == pytest.approx(0.1) and p.stats()["spent_seconds"] == pytest.approx(0.1)
    total = 0
    for _ in range(100):  # 100 s more: 2 s to spend, 50 ms a sampled request
        clock.now += 1.0
        total += sum(1 for x in sampled(p, "/a", 5) if x)
    assert 39 <= total <= 41
    unbounded = profiling(clock, every=1, max_per_second=1000, max_share=0)
    assert sampled(unbounded, "/a", 20) == [None] + [True] * 19


def test_profiles_whose_bookkeeping_overdraws_the_budget_wait_for_it(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Profiles costing 50 ms each, sampled or, once the sampling's budget is spent, timed only
    # (a deep app's bookkeeping), 2 % to spend in each allowance (0.1 s saved up): two sampled,
    # then timed ones until their allowance is overdrawn, then as both refill; over 100 s,
    # twice the share of the clock at most, not 1,000 a second's.
    monkeypatch.setattr(FakeProfiler, "spent_each", 0.05)
    monkeypatch.setattr(FakeProfiler, "timed_each", 0.05)
    clock = FakeClock()
    p = profiling(clock, every=1, max_per_second=1000, max_share=0.02)
    at_once = sampled(p, "/a", 20)
    assert at_once[:6] == [None, True, True, False, False, False]
    assert at_once[6:] == [None] * 14
    for _ in range(100):
        clock.now += 1.0
        sampled(p, "/a", 10)
    assert p.spent <= 2 * 0.02 * 100 + 0.25
    assert p.profiled >= 40  # at least what one allowance buys: 2 s in 50 ms profiles
    unbounded = profiling(FakeClock(), every=1, max_per_second=1000, max_share=0)
    assert None not in sampled(unbounded, "/a", 20)[1:]


def test_an_overdrawn_budget_stops_the_sampling_not_the_profiles() -> None:
    # One long sampled slice (a route computing on the loop) overdraws the budget by 0.2 s: the
    # next profiles are timed only, so an awaiting route keeps its exact awaits meanwhile.
    clock = FakeClock()
    p = profiling(clock, every=1, max_per_second=1000, max_share=0.02)
    assert p.budget is not None
    p.budget.spend(0.3)
    assert sampled(p, "/a", 4) == [None, False, False, False]
    clock.now += 9.0  # 180 ms paid back: still 20 ms owed
    assert sampled(p, "/a", 2) == [False, False]
    clock.now += 1.5
    assert sampled(p, "/a", 1) == [True]


def test_concurrent_profiles_are_capped_and_released() -> None:
    p = profiling(FakeClock(), every=1, max_per_second=1000, max_concurrent=2)
    for route in ("/a", "/b", "/c"):
        p.observe("GET", route, 1.0)
    first, second = p.admit("GET", "/a"), p.admit("GET", "/b")
    assert first is not None and second is not None
    assert p.admit("GET", "/c") is None and p.capped == 1
    first.records = []
    p.finish(first, 0.0, "GET", "/a", 1.0)
    p.observe("GET", "/c", 1.0)  # the capped route's next turn
    assert p.admit("GET", "/c") is not None


def test_a_capped_route_waits_for_its_next_turn() -> None:
    # Under the cap a busy route is not tested again on every request: refused once, it is
    # disarmed until `every` more of its requests have come.
    clock = FakeClock()
    p = profiling(clock, every=10, max_per_second=1)
    served = [serve(p, "GET", "/a", "/a") for _ in range(11)]
    assert served[10] and p.profiled == 1
    for _ in range(10):
        serve(p, "GET", "/a", "/a")
    assert p.armed == [] and p.capped == 1  # the 11th after was refused, not the next ten
    clock.now += 1.0
    assert sum(serve(p, "GET", "/a", "/a") for _ in range(11)) == 1


def test_zero_disables_and_unmatched_is_never_profiled() -> None:
    p = profiling(FakeClock(), every=0)
    assert not any(serve(p, "GET", "/a", "/a", ms=10_000) for _ in range(50))
    assert p.stats()["enabled"] is False
    p.configure(ProfilingOptions(every=1))
    assert not any(serve(p, "GET", "/x", "<unmatched>") for _ in range(5))
    assert serve(p, "GET", "/a", "/a") is False and serve(p, "GET", "/a", "/a") is True


def test_without_pyinstrument_awaits_are_still_profiled_and_the_agent_says_so(
        monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("pyinstrument", "pyinstrument.stack_sampler",
                 "pyinstrument.low_level.stat_profile"):
        monkeypatch.setitem(sys.modules, name, None)  # what a failed import looks like
    p = RequestProfiling(deque(), ProfilingOptions(every=1))
    p.load()
    p.observe("GET", "/a", 1.0)
    run = p.admit("GET", "/a")
    assert run is not None

    async def handler(scope: dict[str, str], receive: None, send: None) -> None:
        await asyncio.sleep(0.02)  # timed-await

    asyncio.run(run.around(handler, {"type": "http"}, None, None))
    p.finish(run, 0.0, "GET", "/a", 20.0)
    [shipped] = p.profiles
    awaited = [n for n in all_nodes(shipped["tree"]) if n["await_ms"] > 0]
    assert [(n["function"], n["line"]) for n in awaited] == [("sleep", awaited[0]["line"])]
    lines = [n["line"] for n in all_nodes(shipped["tree"]) if n["function"].endswith("handler")]
    assert lines == [_line_of("# timed-await")] and awaited[0]["await_ms"] >= 18
    stats = p.stats()
    assert stats["enabled"] is True and stats["unavailable"] is None
    assert "pyinstrument" in stats["limited"] and stats["profiled"] == 1


def _line_of(marker: str) -> int:
    lines = Path(__file__).read_text().splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.rstrip().endswith(marker))


def test_frames_are_named_as_pyinstrument_names_them() -> None:
    from pyinstrument.low_level.stat_profile import get_frame_info

    from apiscope.agent.profiler import frame_identifier
    from apiscope.agent.profiletree import parse_frame

    class Shop:
        def method(self) -> FrameType:
            return sys._getframe()

    def function() -> FrameType:
        return sys._getframe()

    for frame in (Shop().method(), function()):
        assert parse_frame(frame_identifier(frame)) == parse_frame(get_frame_info(frame))


def test_pyinstrument_is_imported_at_the_first_pull_not_with_the_agent(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Injected, the agent is built on the server's main thread: importing pyinstrument there
    # would hold the event loop. Nothing is profiled before the first pull arms a route.
    for name in [n for n in sys.modules if n == "pyinstrument" or n.startswith("pyinstrument.")]:
        monkeypatch.delitem(sys.modules, name)
    p = RequestProfiling(deque(), ProfilingOptions(every=1))
    assert "pyinstrument" not in sys.modules and p.stats()["enabled"] is False
    p.observe("GET", "/a", 1.0)
    assert p.armed == []
    p.load()
    assert "pyinstrument.stack_sampler" in sys.modules and p.stats()["enabled"] is True
    p.observe("GET", "/a", 1.0)
    assert p.admit("GET", "/a") is not None


def test_route_templates_match_their_paths() -> None:
    pattern = template_pattern("/items/{item_id}/quote")
    assert pattern.fullmatch("/items/42/quote") and not pattern.fullmatch("/items/4/2/quote")
    assert template_pattern("/files/{rest:path}").fullmatch("/files/a/b.txt")
    assert template_pattern("/v1.0/{id:int}").fullmatch("/v1.0/7")
    assert not template_pattern("/v1.0/{id:int}").fullmatch("/v1x0/7")


def test_options_from_environment() -> None:
    env = {"APISCOPE_PROFILE_EVERY": "0", "APISCOPE_PROFILE_SLOW_MS": "350",
           "APISCOPE_PROFILE_MAX_PER_SECOND": "nonsense", "APISCOPE_PROFILE_MAX_NODES": "-3"}
    options = options_from_env(env)
    assert (options.every, options.slow_ms) == (0, 350.0) and not options.enabled
    assert options.max_per_second == ProfilingOptions().max_per_second  # ignored, not fatal
    assert options.max_nodes == ProfilingOptions().max_nodes


def test_a_pulled_batch_arms_each_route_once_by_its_weighted_count() -> None:
    # What the agent's socket thread does with the requests a pull drained: counted per route
    # (an entry kept for n requests counts n), each route armed at most once per batch.
    from apiscope.agent.recorder import RequestEntry

    def entry(route: str, ms: float = 5.0, weight: int = 1) -> RequestEntry:
        return RequestEntry(0.0, ms, "GET", route, 200, None, None, None, (), weight)

    p = profiling(FakeClock(), every=10, slow_ms=200, max_per_second=1000)
    p.observe_batch([entry("/a"), entry("/b")])  # routes met for the first time: armed at once
    assert sorted(e[2] for e in p.armed) == [("GET", "/a"), ("GET", "/b")]
    p.armed = []
    p.observe_batch([entry("/a")] * 9 + [entry("/b", weight=4)] * 2)
    assert p.armed == []  # /a: 9 of 10; /b: 8 of 10
    p.observe_batch([entry("/a"), entry("/a"), entry("/b", weight=4)])
    assert sorted(e[2] for e in p.armed) == [("GET", "/a"), ("GET", "/b")]
    assert p.admit("GET", "/a") is not None and p.admit("GET", "/a") is None  # once
    p.observe_batch([entry("/c")])
    p.armed = [e for e in p.armed if e[2][1] != "/c"]
    p.observe_batch([entry("/c", ms=250.0)])  # one slow request arms its route at once
    assert [e[2] for e in p.armed if e[2][1] == "/c"] == [("GET", "/c")]
    p.armed = []
    p.observe_batch([entry(f"/r{i}") for i in range(20)])  # 20 new routes: 8 armed at most
    assert len(p.armed) == 8  # (each request pays a regex match per armed route)
    p.configure(ProfilingOptions(every=0))  # off: nothing counted, nothing armed
    p.observe_batch([entry("/d", ms=900.0)] * 50)
    assert p.armed == []
