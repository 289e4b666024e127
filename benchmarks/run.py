"""`make bench`: run every benchmark and rewrite docs/benchmarks.md with the results.

Each table gives the command, the machine, and for overheads the ratio against the baseline
measured in the same run (interleaved rounds, medians): the machines are shared and noisy.
`python -m benchmarks.run --only overhead,ingest` runs a subset.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections.abc import Callable
from typing import Any

from benchmarks import (
    bench_agent_cost,
    bench_attach,
    bench_dashboard,
    bench_export,
    bench_gc,
    bench_ingest,
    bench_inject,
    bench_overhead,
    bench_profiling,
    bench_session_size,
    bench_watchdog,
    bench_workers,
    soak,
)
from benchmarks.harness import ROOT, machine

OUT = ROOT / "docs" / "benchmarks.md"
RAW = ROOT / "docs" / "benchmarks.json"


def section_overhead() -> tuple[str, Any]:
    agent = bench_overhead.agent_overhead()
    sampling = bench_overhead.sampling_overhead()
    text = ("## Agent and sampling overhead\n\nuvicorn pinned to core 0, wrk (1 thread, 32 "
            f"connections, {agent['seconds']} s runs) pinned to core 1, FastAPI item endpoint; "
            f"{agent['rounds']} interleaved rounds, each variant's throughput divided by the "
            "bare app's in the same round (median, min, max). Goals: agent >= 0.97 and better "
            "than every peer; 100 Hz sampling >= 0.97.\n\n"
            + bench_overhead.render(agent, sampling))
    return text, {"agent": agent, "sampling": sampling}


def section_agent_cost() -> tuple[str, Any]:
    result = bench_agent_cost.run()
    text = ("## The agent's cost in instructions\n\nThe bench app's item endpoint driven "
            "in-process (synthetic requests into the ASGI app, no server) under valgrind's "
            f"callgrind, {result['short']} and {result['long']} requests, the difference per "
            "request; the serving thread only, string hashing seeded, so a count repeats to a "
            f"fraction of a percent whatever else the host runs ({result['rounds']} rounds). "
            "`floor` is a middleware that only awaits the app. The agent's watchdogs are off "
            "here (their threads run by the clock; see the watchdog section). Goal: the agent "
            "<= 1.03. Below it, the same count for uvicorn's serving thread answering one "
            "keep-alive client (HTTP parsing, transport and loop included), once; with the "
            "watchdogs on it includes their clock-driven probes of the loop, which valgrind's "
            "fifty-fold slowdown makes fifty times as frequent per request: an upper bound."
            "\n\n"
            + bench_agent_cost.render(result))
    return text, result


def section_gc() -> tuple[str, Any]:
    result = bench_gc.run()
    text = ("## The garbage collector under load\n\nuvicorn pinned to core 0, wrk (1 thread, "
            f"{result['connections']} connections, {result['seconds']} s runs, after a 2 s "
            "warm-up) pinned to core 1, FastAPI item endpoint; the collector's passes of each "
            "generation counted inside the server (`gc.get_stats()`, read by a `sitecustomize` "
            "put on its path) and its CPU (each pass timed by the thread's CPU clock through "
            f"`gc.callbacks`), per request; {result['rounds']} interleaved rounds. A bare server "
            "frees what each request allocated as it ends and never runs the collector (the "
            "counting thread's own writes make its few passes); what a middleware keeps alive "
            "past a request's end makes it run, and promotes the framework's objects of the "
            "requests in flight. Before the agent dropped a request's scope as it ended, it "
            "read 19.0-20.5 young, 1.7-1.9 middle and 0.15-0.16 full passes per 1,000 requests "
            "and 4.6-6.1 µs of the collector's CPU a request (two runs).\n\n"
            + bench_gc.render(result))
    return text, result


def section_attach() -> tuple[str, Any]:
    result = bench_attach.run()
    sat = result["saturated"]
    busy = result["busy_host"]
    text = ("## apiscope attach at its defaults\n\n"
            "**Saturated worker.** uvicorn pinned to core 0 under wrk (1 thread, 32 connections, "
            f"{sat['seconds']} s runs) pinned to core 1, FastAPI item endpoint. apiscope and "
            "py-spy are pinned to the server's core, so all their cost (the collector's own "
            "included) is taken from the server; apiscope is measured after "
            f"{bench_attach.SETTLE_SECONDS} s of load, once its budget has learnt the costs. "
            f"{sat['rounds']} interleaved rounds, each variant's throughput divided by the bare "
            "server's in the same round (median, min, max); py-spy alone, at 100 Hz and at the "
            "rate apiscope's budget chose in the same round, is the anchor. Goal: >= 0.97 for "
            "the agent, sampling and the full attach.\n\n"
            "**Paired.** The agent's own cost with the host's noise taken out: a bare and an "
            "instrumented server (`instrument(app)`, no collector) run at the same time on core "
            "0, each under its own wrk (16 connections) on core 1, for "
            f"{result['paired']['seconds']} s in each of {result['paired']['rounds']} rounds; "
            "each server's CPU per request from the kernel's per-thread CPU time (schedstat), "
            "the loop thread's and the agent's own threads' apart. Goal: <= 1.03. The same "
            "with a bare server under `apiscope attach` at its defaults (pinned to core 0) in "
            "place of the instrumented one gives the whole attach's CPU per request, the "
            "target's and apiscope's own (py-spy included); throughput is not compared there, "
            "since while py-spy holds the attached server stopped the bare one has the core "
            "to itself.\n\n"
            "**Busy host.** FastAPI with sync (psycopg) and async (asyncpg) routes on a real "
            "PostgreSQL; server, database, wrk (16 connections, mixed routes) and apiscope share "
            f"the 2 cores, nothing pinned; {busy['rounds']} interleaved rounds of "
            f"{busy['seconds']} s; sampling only is `attach --no-inject`, the cost of the "
            "stacks without the agent; the server's CPU per request (all its threads, from the "
            "kernel) beside throughput, steadier on a host whose other processes compete for "
            "the cores. Goal: throughput >= 0.95, client p95 within +10%.\n\n"
            + bench_attach.render(result))
    return text, result


def section_workers() -> tuple[str, Any]:
    result = bench_workers.run()
    cores, budget = result["cores"], result["budget_percent"] or 0.0
    text = ("## apiscope attach to a server with workers\n\n"
            f"`uvicorn --workers {result['workers']}` and `gunicorn -w {result['workers']} -k "
            "uvicorn.workers.UvicornWorker` serving the FastAPI item endpoint under two wrk "
            f"(1 thread, {result['connections'] // 2} connections each, a plain GET, "
            f"{result['seconds']} s runs), the second started {result['stagger']} s after the "
            "first: connections opened all at once mostly go to whichever worker accepts "
            "first, and the other stays idle for the run. A run in which a worker did less "
            f"than {result['balanced']:.0%} of the workers' CPU is run again (at most twice). "
            f"Server, load and apiscope share the {cores} cores, nothing pinned (the "
            "workers need them all). `apiscope attach MASTER_PID --no-dashboard` at its "
            "defaults, measured after "
            f"{result['settle_seconds']} s of load, once its budget has learnt the costs; the "
            f"budget is {budget:g} % of the target's capacity, one core per worker (here "
            f"{budget / 100 * min(cores or 1, result['workers']):.2f} cores). py-spy alone "
            "(`py-spy "
            "record --subprocesses` on the master), at the rate apiscope's budget chose while "
            "it was measured in the same round, is the anchor. "
            f"{result['rounds']} interleaved rounds, each variant's throughput divided by the "
            "same server's bare throughput in the same round (median, min, max); a fresh "
            "server for each run. Server CPU per request is the whole process tree's (master "
            "and workers, the agent's threads included); apiscope's CPU includes its py-spy "
            "runs. The sampling rate of the attach is its windows' over the measured run, the "
            "report's effective rate (the whole session's, its first window at 100 Hz "
            "included) in brackets; the measured cost is the report's `overhead_percent`, "
            "apiscope's whole cost over the session as a share of the target's capacity; the "
            "session lasts about 15 s (the agents' start, the settling, the run), so its first "
            "second at 100 Hz and the injections weigh on it (an hour at the floor: the soak). "
            "Goal: throughput >= 0.97 of bare, and the measured cost within the budget.\n\n"
            + bench_workers.render(result))
    return text, result


def section_inject() -> tuple[str, Any]:
    result = bench_inject.run()
    text = ("## Injection: how long the server stops answering\n\nA bare uvicorn pinned to "
            "core 0, asked for its item endpoint every 2 ms by one keep-alive client; the agent "
            f"injected and detached in {result['rounds']} interleaved rounds, the functions "
            "to call found by address in the target's files (what `attach` does; the calls "
            "made with ptrace on x86-64) against gdb's symbol lookup while it holds the target "
            "(the fallback). The injector's run (its start-up included), and the longest answer "
            "the client got meanwhile (the thread held for the calls plus the agent's start-up "
            "or removal on the main thread), medians:\n\n"
            + bench_inject.render(result))
    return text, result


def section_soak() -> tuple[str, Any]:
    result = soak.run()
    text = ("## Soak\n\n`make soak`: `apiscope attach` at its defaults (dashboard off) on one "
            "uvicorn worker (benchmark item endpoint, pinned to core 0) under a steady load "
            "(wrk, 4 connections, one-minute runs, pinned to core 1), apiscope on the server's "
            f"core, for {result['minutes']} minutes; every minute's figures (every "
            "n-th row shown):\n\n" + soak.render(result))
    return text, result


def section_profiling() -> tuple[str, Any]:
    result = bench_profiling.run()
    text = ("## Per-request profiles\n\nThe agent with pyinstrument profiles at the default "
            "share against the agent with profiling off, same set-up as above:\n\n"
            + bench_profiling.render(result))
    return text, result


def section_ingest() -> tuple[str, Any]:
    result = bench_ingest.run()
    size = bench_session_size.run()
    text = ("## Ingest and session size\n\nParser + thread classification + the split of each "
            "thread's measured CPU over its stacks + session writer, replaying real py-spy raw "
            "windows (3 runs): median "
            f"**{result['median_samples_per_second']:,.0f} samples/s** (goal >= 100,000).\n\n"
            f"Session growth under `attach --rate 100` of gunicorn with {size['workers']} Uvicorn "
            f"workers at {size['request_rate']:.0f} requests/s, measured over "
            f"{size['seconds']:.0f} s after a warm-up of {bench_session_size.WARM_UP:.0f} s (which"
            f" stores each distinct stack once: {size['warm_up_bytes'] / 1e6:.1f} MB) and"
            f" projected: **{size['mb_per_hour']:.1f} MB per hour** (goal <= 50 MB).")
    return text, {"ingest": result, "session_size": size}


def section_export() -> tuple[str, Any]:
    result = bench_export.run()
    rows = "\n".join(f"| {fmt} | {r['median_seconds']:.2f} s | {r['median_cpu_seconds']:.2f} s |"
                     f" {r['output_bytes'] / 1e6:.1f} MB |"
                     for fmt, r in result["formats"].items())
    text = (f"## Flamegraph export\n\n`apiscope export` of a generated session of "
            f"{result['samples']:,} samples (median of 3; goal < 5 s each):\n\n"
            "| format | wall | CPU | output |\n| --- | --- | --- | --- |\n" + rows)
    return text, result


def section_dashboard() -> tuple[str, Any]:
    result = bench_dashboard.run()
    rows = "\n".join(f"| {name} | {v['median_ms']:.0f} ms | {v['p95_ms']:.0f} ms |"
                     for name, v in result["callbacks_http"].items())
    s = result["session"]
    text = (f"## Dashboard\n\nA session of {s['samples']:,} samples and {s['requests']:,} "
            f"requests ({s['file_mb']} MB). Opening it: {result['cold_start_s']:.2f} s. "
            "Callbacks as the browser calls them (goal: p95 < 300 ms):\n\n"
            "| view | median | p95 |\n| --- | --- | --- |\n" + rows +
            f"\n\nFirst page render in headless Chromium: {result['browser_page_s']}")
    return text, result


def section_watchdog() -> tuple[str, Any]:
    result = bench_watchdog.run()
    text = ("## The agent's watchdogs\n\nA real asyncio loop in a thread, watched by the agent's"
            f" watchdogs at their defaults, {result['seconds']:.0f} s per run, "
            f"{result['rounds']} interleaved rounds; the watchdog threads' own CPU time as the"
            " agent reports it. Goal: almost nothing while nothing is wrong.\n\n"
            + bench_watchdog.render(result))
    return text, result


SECTIONS: dict[str, Callable[[], tuple[str, Any]]] = {
    "attach": section_attach,
    "workers": section_workers,
    "inject": section_inject,
    "overhead": section_overhead,
    "agent_cost": section_agent_cost,
    "gc": section_gc,
    "profiling": section_profiling,
    "ingest": section_ingest,
    "export": section_export,
    "dashboard": section_dashboard,
    "watchdog": section_watchdog,
    "soak": section_soak,
}
# An hour long: `make soak` runs it, `make bench` does not.
DEFAULT = [name for name in SECTIONS if name != "soak"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", help="comma-separated sections: " + ",".join(SECTIONS))
    args = parser.parse_args()
    names = args.only.split(",") if args.only else DEFAULT
    texts = previous_sections()
    raw = json.loads(RAW.read_text()) if RAW.exists() and args.only else {}
    for name in names:
        print(f"benchmark: {name} ...", flush=True)
        t0 = time.perf_counter()
        text, raw[name] = SECTIONS[name]()
        # Sections are rerun apart, on whatever machine is at hand: each names its own.
        texts[name] = f"{text}\n\nRun on {time.strftime('%Y-%m-%d')}: {machine()}."
        print(f"benchmark: {name} done in {time.perf_counter() - t0:.0f} s", flush=True)
    header = ("# Benchmarks\n\nCommand: `make bench` (`python -m benchmarks.run`; `--only "
              "overhead,ingest` reruns some sections and keeps the others; each section ends"
              " with the date and machine it was run on).\n")
    body = "\n\n".join(f"<!-- section:{name} -->\n{texts[name]}\n<!-- end:{name} -->"
                       for name in SECTIONS if name in texts)
    OUT.write_text(header + "\n" + body + "\n")
    RAW.write_text(json.dumps(raw, indent=2, default=str) + "\n")
    print(f"wrote {OUT}")


def previous_sections() -> dict[str, str]:
    """The sections of the current docs/benchmarks.md, by name, to keep what is not rerun."""
    if not OUT.exists():
        return {}
    found = re.findall(r"<!-- section:(\w+) -->\n(.*?)\n<!-- end:\1 -->", OUT.read_text(),
                       flags=re.S)
    return dict(found)


if __name__ == "__main__":
    main()
