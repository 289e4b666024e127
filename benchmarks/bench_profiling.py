"""What per-request async profiling costs: the agent without profiling against the agent
profiling at its default share and cap, and against uncapped shares, under wrk.

uvicorn pinned to core 0, wrk to core 1 (see `harness`), the FastAPI item endpoint of
`benchmarks.apps` with `instrument(app)`. Every round measures every variant once, in turn
(interleaved); ratios are to the agent without profiling (`APISCOPE_PROFILE_EVERY=0`) of the
same round. After each run the agent's own counters say how many requests it profiled.
Also measured in-process: the per-request cost of the profiling decision for an unprofiled
request, and the cost of compacting one profile.

`python -m benchmarks.bench_profiling` prints the table and the raw numbers.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import timeit
from collections import deque
from typing import Any

from benchmarks.harness import cpu_seconds, machine, ratio_summary, server, wrk

BASELINE = "off"
VARIANTS: dict[str, dict[str, str]] = {
    "off": {"APISCOPE_PROFILE_EVERY": "0"},
    "default (1 in 20, 5/s cap)": {},
    "1 in 20, uncapped": {"APISCOPE_PROFILE_MAX_PER_SECOND": "1000000",
                          "APISCOPE_PROFILE_MAX_SHARE": "0",
                          "APISCOPE_PROFILE_MAX_CONCURRENT": "1000"},
    "every request, uncapped": {"APISCOPE_PROFILE_EVERY": "1",
                                "APISCOPE_PROFILE_MAX_PER_SECOND": "1000000",
                                "APISCOPE_PROFILE_MAX_SHARE": "0",
                                "APISCOPE_PROFILE_MAX_CONCURRENT": "1000"},
}


def profiled_count(pid: int) -> int:
    from apiscope.collectors.agent_client import AgentClient

    with AgentClient(pid, timeout=5.0) as client:
        reply = client.request({"op": "pull", "max": 1})
    return int((reply.get("profiling") or {}).get("profiled", 0))


def measure(env: dict[str, str], seconds: int) -> tuple[float, float, float]:
    """(requests per second, server CPU µs per request, profiles per second)."""
    full = {"BENCH_MIDDLEWARE": "apiscope", "PYINSTRUMENT_IGNORE_OVERHEAD_WARNING": "1", **env}
    with server("benchmarks.apps:app", full) as (pid, url):
        wrk(url, seconds=1)  # warm-up
        profiled_before = profiled_count(pid)
        before = cpu_seconds(pid)
        rps = wrk(url, seconds=seconds)
        used = cpu_seconds(pid) - before
        profiled = profiled_count(pid) - profiled_before
    return rps, 1e6 * used / max(1.0, rps * seconds), profiled / seconds


def decision_cost_ns(n: int = 200_000) -> dict[str, float]:
    """In-process: what an unprofiled request pays at its two hook points, nothing armed
    (the common case) and one other route armed (a regex match that fails)."""
    from apiscope.agent.profiling import ProfilingOptions, RequestProfiling

    idle = RequestProfiling(deque(), ProfilingOptions(every=1_000_000_000))
    armed = RequestProfiling(deque(), ProfilingOptions(every=1_000_000_000))
    armed.observe("GET", "/other/{x}", 10_000.0)  # slow: arms that route
    assert armed.armed

    def hook(p: RequestProfiling) -> None:
        if p.armed:
            p.admit("GET", "/items/1")
        if p.active:
            p.observe("GET", "/items/{item_id}", 1.0)

    def nothing(p: RequestProfiling) -> None:
        pass

    def best(fn: Any, p: RequestProfiling) -> float:
        return min(timeit.repeat(lambda: fn(p), number=n, repeat=5)) / n

    floor = best(nothing, idle)  # the timing loop and the call itself
    return {name: 1e9 * (best(hook, p) - floor)
            for name, p in (("nothing_armed", idle), ("other_route_armed", armed))}


def compaction_ms(repeat: int = 20) -> dict[str, Any]:
    """In-process: profile one request of a small Starlette app through the agent, then time
    compacting its records."""
    import httpx
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    from apiscope.agent.profiling import ProfileRun, ProfilingOptions, compact_tree
    from apiscope.agent.runtime import Agent

    async def slow(request: Any) -> JSONResponse:
        await asyncio.sleep(0.02)
        return JSONResponse({"sum": sum(i * i for i in range(20_000))})

    runs: list[ProfileRun] = []
    agent = Agent()
    agent.configure_profiling(ProfilingOptions(every=1))
    original_finish = agent.profiling.finish

    def keep(run: ProfileRun, *args: Any) -> None:
        runs.append(run)
        original_finish(run, *args)

    agent.profiling.finish = keep  # type: ignore[method-assign]
    app = agent.middleware(Starlette(routes=[Route("/slow", slow)]))

    async def drive() -> None:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            for _ in range(3):
                await client.get("/slow")

    asyncio.run(drive())
    records = runs[-1].records or []
    timings = timeit.repeat(lambda: compact_tree(records, "GET /slow", 40.0), number=1,
                            repeat=repeat)
    tree_bytes = len(json.dumps(agent.profiles[-1]["tree"]))
    return {"records": len(records), "median_ms": 1e3 * statistics.median(timings),
            "tree_json_bytes": tree_bytes}


def run(rounds: int = 3, seconds: int = 5) -> dict[str, Any]:
    ratios: dict[str, list[float]] = {v: [] for v in VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rate: dict[str, list[float]] = {v: [] for v in VARIANTS}
    rps: dict[str, list[float]] = {v: [] for v in VARIANTS}
    for _ in range(rounds):
        results = {v: measure(env, seconds) for v, env in VARIANTS.items()}
        base = results[BASELINE][0]
        for v, (r, us, per_second) in results.items():
            ratios[v].append(r / base)
            cpu[v].append(us)
            rate[v].append(per_second)
            rps[v].append(r)
    return {"machine": machine(), "rounds": rounds, "seconds": seconds, "ratios": ratios,
            "cpu_us": cpu, "profiles_per_second": rate, "rps": rps,
            "decision_ns": decision_cost_ns(), "compaction": compaction_ms()}


def render(result: dict[str, Any]) -> str:
    lines = ["| variant | throughput ratio to no profiling (median) | server CPU per request"
             " | profiles per second |", "| --- | --- | --- | --- |"]
    for v, rs in result["ratios"].items():
        lines.append(f"| {v} | {ratio_summary(rs)} | {statistics.median(result['cpu_us'][v]):.0f}"
                     f" µs | {statistics.median(result['profiles_per_second'][v]):.1f} |")
    d, c = result["decision_ns"], result["compaction"]
    lines += ["", f"Decision per unprofiled request: {d['nothing_armed']:.0f} ns with nothing"
              f" armed, {d['other_route_armed']:.0f} ns with another route armed.",
              f"Compacting one profile ({c['records']} records): {c['median_ms']:.2f} ms;"
              f" shipped tree {c['tree_json_bytes']} bytes of JSON."]
    return "\n".join(lines)


if __name__ == "__main__":
    outcome = run()
    print(render(outcome))
    print(json.dumps(outcome, indent=1))
