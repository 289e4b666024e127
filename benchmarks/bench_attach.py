"""What `apiscope attach` at its defaults costs a server, against py-spy alone.

Three measurements, each a ratio to the bare server measured in the same round:

- **saturated**: one uvicorn worker pinned to SERVER_CPU under wrk (pinned to LOAD_CPU) at full
  load. Variants: the agent alone (`instrument(app)`), sampling alone (`attach --no-inject`),
  the full attach, and py-spy alone, at 100 Hz and at the rate apiscope's budget chose in the
  same round (the anchor: what any sampling profiler costs). apiscope and py-spy are pinned to
  the server's core, so all of their cost lands on the target, none on the load generator.
- **busy host**: a FastAPI app with sync (psycopg) and async (asyncpg) routes on a real
  PostgreSQL; server, database, wrk and apiscope share the machine, nothing pinned. Throughput
  and client p95 attached against unattached.
- **first data**: from `apiscope attach` starting to its dashboard's `/metrics` showing both
  requests and stack samples.
- **paired**: the agent's own cost, with the host's noise taken out: a bare and an instrumented
  server run at the same time on SERVER_CPU, each under its own wrk, so that whatever the host
  does to one (its speed here moves by a third within minutes) it does to the other. The
  kernel's per-thread CPU time (`/proc/PID/task/TID/schedstat`) gives each server's CPU per
  request, the loop thread's and the agent's own threads' apart.
- **paired attach**: the same with a bare server under `apiscope attach` at its defaults in
  place of the instrumented one: the target's CPU per request and apiscope's own (py-spy
  included) against the bare server's. Throughput is not compared there: while py-spy holds the
  attached server stopped, the bare one has the core to itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, TypeVar

from apiscope.collectors.pyspy import find_pyspy
from apiscope.collectors.threadcpu import ThreadCpuReader, usage
from benchmarks.harness import (
    LOAD_CPU,
    ROOT,
    SERVER_CPU,
    cpu_seconds,
    free_port,
    ratio_summary,
    server,
    stop_process,
    tree_cpu_seconds,
    wait_for,
    wait_http,
    wrk,
)

T = TypeVar("T")
SETTLE_SECONDS = 8  # of load after attaching, before measuring
SATURATED = ("bare", "agent", "sampling only", "attach", "py-spy 100 Hz", "py-spy, same rate")
APISCOPE = [sys.executable, "-m", "apiscope"]


def agent_answers(pid: int) -> bool:
    from apiscope.collectors.agent_client import AgentClient

    with AgentClient(pid) as client:
        return client.available()


@contextmanager
def attached(pid: int, *extra: str, pin: bool = True, env: dict[str, str] | None = None,
             session: Path | None = None) -> Iterator[dict[str, Any]]:
    """`apiscope attach PID` at its defaults for the block; yields a dict that holds, once the
    block ends, the report's sampling figures. The session goes to `session` when given."""
    tmp = Path(tempfile.mkdtemp(prefix="apiscope-bench-"))
    session = session or tmp / "s.sqlite"
    argv = [*APISCOPE, "attach", str(pid), "--session", str(session), "--report",
            str(tmp / "r.json"), "--quiet", *extra]
    if pin:
        argv = ["taskset", "-c", SERVER_CPU, *argv]
    proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **(env or {})},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out: dict[str, Any] = {"pid": proc.pid}
    try:
        yield out
    finally:
        # SIGTERM, as systemd or Kubernetes would stop it (a benchmark started in the
        # background of a script inherits an ignored SIGINT, and so would apiscope).
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            _, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            _, err = proc.communicate()
        try:
            report = json.loads((tmp / "r.json").read_text())
        except (OSError, ValueError):
            raise RuntimeError(f"apiscope attach wrote no report: {err[-500:]}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        out.update(report.get("samples", {}))


@contextmanager
def pyspy(pid: int, rate: int) -> Iterator[dict[str, Any]]:
    """py-spy alone, as people run it (`record`, blocking, no --idle), on the server's core."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            ["taskset", "-c", SERVER_CPU, find_pyspy(), "record", "-p", str(pid), "--rate",
             str(rate), "--format", "raw", "--output", f"{tmp}/out.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        out["pid"] = proc.pid
        try:
            time.sleep(1.0)  # its start-up (symbols) is not what is being measured
            yield out
        finally:
            stop_process(proc, 30)


def _cpu_during(pid: int, collector: int | None, load: Callable[[], T],
                ) -> tuple[T, float, float, float]:
    """(what `load` returned, the server's CPU seconds, the collector's with its py-spy runs,
    wall seconds) over one run of `load`, from the kernel."""
    before, c_before, t0 = cpu_seconds(pid), tree_cpu_seconds(collector) if collector else 0.0, \
        time.monotonic()
    result = load()
    elapsed = time.monotonic() - t0
    used = cpu_seconds(pid) - before
    c_used = (tree_cpu_seconds(collector) - c_before) if collector else 0.0
    return result, used, c_used, elapsed


def _measure(pid: int, url: str, seconds: int, collector: int | None) -> dict[str, float]:
    wrk(url, seconds=1)  # warm-up
    rps, used, c_used, elapsed = _cpu_during(pid, collector, lambda: wrk(url, seconds=seconds))
    return {"rps": rps, "server_us": 1e6 * used / max(1.0, rps * seconds),
            "collector_cores": c_used / elapsed}


def _saturated_variant(variant: str, seconds: int, rate: int) -> dict[str, Any]:
    middleware = "apiscope" if variant == "agent" else "bare"
    with server("benchmarks.apps:app", {"BENCH_MIDDLEWARE": middleware}) as (pid, url):
        if variant in ("bare", "agent"):
            return _measure(pid, url, seconds, None)
        if variant.startswith("py-spy"):
            with pyspy(pid, 100 if variant == "py-spy 100 Hz" else rate) as spy:
                return _measure(pid, url, seconds, spy["pid"])
        extra = ["--no-dashboard"] + (["--no-inject"] if variant == "sampling only" else [])
        with attached(pid, *extra) as run:
            if variant == "attach":
                wait_for(lambda: agent_answers(pid), 60, "the agent")
            # Steady state: the budget has learnt the costs from the first windows (at the rate
            # asked for) and planned the following ones; what is left running for hours.
            wrk(url, seconds=SETTLE_SECONDS)
            result = _measure(pid, url, seconds, run["pid"])
        result["effective_rate_hz"] = run.get("effective_rate_hz")
        result["overhead_percent"] = run.get("overhead_percent")
        return result


def saturated(rounds: int = 5, seconds: int = 5) -> dict[str, Any]:
    """Every variant once per round, the bare server's throughput of the round as the base."""
    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in SATURATED}
    for _ in range(rounds):
        results: dict[str, dict[str, Any]] = {}
        rate = 100
        for variant in SATURATED:  # attach comes before the py-spy run at its rate
            results[variant] = _saturated_variant(variant, seconds, rate)
            if variant == "attach" and results[variant].get("effective_rate_hz"):
                rate = max(1, round(results[variant]["effective_rate_hz"]))
            results[variant]["rate_hz"] = rate if variant == "py-spy, same rate" else None
        for variant, result in results.items():
            result["ratio"] = result["rps"] / results["bare"]["rps"]
            rows[variant].append(result)
    return {"rounds": rounds, "seconds": seconds, "variants": rows}


# --- paired: bare and instrumented at the same time ------------------------------------------

def _requests_in(out: str) -> int:
    match = re.search(r"(\d+) requests in", out)
    if match is None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return int(match.group(1))


def _paired_round(seconds: int, variant: str,
                  env: dict[str, str] | None = None) -> dict[str, Any]:
    """One round of a bare server and, at the same moments, `variant`: "agent", a server
    instrumented by `instrument(app)`, "floor", one behind a pass-through middleware, or
    "attach", a bare server under `apiscope attach` at its defaults (pinned to the servers'
    core, its cost taken from them as in `saturated`); `env` is the variant server's."""
    middleware = {"agent": "apiscope", "floor": "floor"}.get(variant, "bare")
    with ExitStack() as stack:
        bare, bare_url = stack.enter_context(server("benchmarks.apps:app",
                                                    {"BENCH_MIDDLEWARE": "bare"}))
        target, url = stack.enter_context(server("benchmarks.apps:app",
                                                 {"BENCH_MIDDLEWARE": middleware, **(env or {})}))
        run: dict[str, Any] = {}
        if variant == "attach":
            run = stack.enter_context(attached(target, "--no-dashboard"))
        reader = ThreadCpuReader()
        warm_up = 2
        if variant == "attach":
            wait_for(lambda: agent_answers(target), 60, "the agent")
            warm_up = SETTLE_SECONDS  # the budget learns its costs and plans the windows after
        for warming, length in ((True, warm_up), (False, seconds)):
            before = reader.read((bare, target))
            spent = tree_cpu_seconds(run["pid"]) if "pid" in run else 0.0
            loads = [subprocess.Popen(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c16",
                                       f"-d{length}s", to], stdout=subprocess.PIPE,
                                      text=True) for to in (bare_url, url)]
            done = [_requests_in(load.communicate()[0]) for load in loads]
            used = usage(before, reader.read((bare, target))).threads  # seconds by (pid, tid)
            spent = (tree_cpu_seconds(run["pid"]) - spent) if "pid" in run else 0.0
            if warming:
                continue
            bare_us = used[(bare, bare)] * 1e6 / done[0]
            loop_us = used[(target, target)] * 1e6 / done[1]
            others_us = sum(seconds for (pid, tid), seconds in used.items()
                            if pid == target and tid != target) * 1e6 / done[1]
            apiscope_us = spent * 1e6 / done[1]
            result: dict[str, Any] = {
                "bare_us": bare_us, "agent_us": loop_us, "ratio": loop_us / bare_us,
                "others_us": others_us, "total_ratio": (loop_us + others_us) / bare_us,
                "apiscope_us": apiscope_us,
                "whole_ratio": (loop_us + others_us + apiscope_us) / bare_us}
    # The report (the sampling rate the budget chose) is read once apiscope has stopped.
    result["effective_rate_hz"] = run.get("effective_rate_hz")
    return result


def paired(rounds: int = 5, seconds: int = 5) -> dict[str, Any]:
    """The agent's CPU per request against the bare server's, measured at the same time."""
    return {"rounds": rounds, "seconds": seconds,
            "rows": [_paired_round(seconds, "agent") for _ in range(rounds)]}


# The agent's parts switched off by its environment, against the agent whole and the floor.
PARTS: dict[str, tuple[str, dict[str, str]]] = {
    "floor": ("floor", {}),
    "agent": ("agent", {}),
    "agent, no watchdogs": ("agent", {"APISCOPE_WATCHDOG": "0"}),
    "agent, no profiles": ("agent", {"APISCOPE_PROFILE_EVERY": "0"}),
    "agent, neither": ("agent", {"APISCOPE_WATCHDOG": "0", "APISCOPE_PROFILE_EVERY": "0"}),
}


def paired_parts(rounds: int = 4, seconds: int = 5) -> dict[str, Any]:
    """Where the agent's CPU per request goes: each of `PARTS` paired with a bare server, the
    variants interleaved round by round (not part of `make bench`: `python -m
    benchmarks.bench_attach paired_parts --rounds 4`)."""
    rows: dict[str, list[dict[str, Any]]] = {name: [] for name in PARTS}
    for _ in range(rounds):
        for name, (variant, env) in PARTS.items():
            rows[name].append(_paired_round(seconds, variant, env))
    return {"rounds": rounds, "seconds": seconds,
            "ratios": {name: ratio_summary([r["ratio"] for r in got])
                       for name, got in rows.items()}}


def paired_attach(rounds: int = 5, seconds: int = 5) -> dict[str, Any]:
    """The whole attach's CPU per request (the target's and apiscope's own, py-spy included)
    against the bare server's, measured at the same time. Throughput is not compared: while
    py-spy holds the attached server stopped, the bare one has the core to itself."""
    return {"rounds": rounds, "seconds": seconds,
            "rows": [_paired_round(seconds, "attach") for _ in range(rounds)]}


# --- the busy host ----------------------------------------------------------------------------

WRK_SCRIPT = """
counter = 0
request = function()
  counter = counter + 1
  local r = counter % 10
  local path
  if r < 5 then path = "/users/" .. (counter % 997 + 1)
  elseif r < 9 then path = "/users/" .. (counter % 97 + 1) .. "/items"
  else path = "/stats" end
  return wrk.format("GET", path)
end
done = function(summary, latency, requests)
  io.write(string.format("p95_us %d\\n", latency:percentile(95)))
end
"""


def fill(dsn: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("CREATE TABLE users (id int PRIMARY KEY, email text, full_name text)")
        conn.execute("CREATE TABLE items (id serial PRIMARY KEY, owner_id int, title text,"
                     " price numeric)")
        conn.execute("INSERT INTO users SELECT i, 'user' || i || '@example.com', 'User ' || i"
                     " FROM generate_series(1, 1000) i")
        conn.execute("INSERT INTO items (owner_id, title, price) SELECT 1 + i % 1000,"
                     " 'item ' || i, (i % 100) * 1.5 FROM generate_series(1, 50000) i")
        conn.execute("CREATE INDEX items_owner ON items (owner_id)")
        conn.execute("ANALYZE")


def _wrk_mixed(base: str, seconds: int, script: Path) -> tuple[float, float]:
    """(requests per second, client p95 in ms) of the mixed load, unpinned."""
    out = subprocess.run(["wrk", "-t1", "-c16", f"-d{seconds}s", "-s", str(script), base],
                         capture_output=True, text=True, check=True).stdout
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    p95 = re.search(r"p95_us (\d+)", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if rps is None or p95 is None or errors is not None:
        raise RuntimeError(f"unexpected wrk output: {out}")
    return float(rps.group(1)), int(p95.group(1)) / 1000


@contextmanager
def _pg_server(dsn: str) -> Iterator[tuple[int, str]]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "uvicorn", "benchmarks.pg_app:app", "--port",
                             str(port), "--log-level", "warning", "--no-access-log"],
                            cwd=ROOT, env={**os.environ, "DATABASE_URL": dsn},
                            stdout=subprocess.DEVNULL, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_http(base + "/users/1")
        yield proc.pid, base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)


BUSY = ("unattached", "sampling only", "attached")  # sampling only: `attach --no-inject`


def busy_host(rounds: int = 5, seconds: int = 10) -> dict[str, Any]:
    from apiscope.services import postgres_server

    rows: dict[str, list[dict[str, Any]]] = {v: [] for v in BUSY}
    with postgres_server() as pg, tempfile.TemporaryDirectory() as tmp:
        dsn = pg.dsn()
        fill(dsn)
        script = Path(tmp) / "mixed.lua"
        script.write_text(WRK_SCRIPT)
        for _ in range(rounds):
            for variant in BUSY:
                with _pg_server(dsn) as (pid, base):
                    _wrk_mixed(base, 2, script)  # warm-up: connections, plans, caches
                    if variant == "unattached":
                        rows[variant].append(_busy_measure(pid, None, base, seconds, script))
                        continue
                    extra = ["--no-inject"] if variant == "sampling only" else []
                    with attached(pid, "--no-dashboard", *extra, pin=False) as run:
                        if not extra:
                            wait_for(lambda: agent_answers(pid), 60, "the agent")  # noqa: B023
                        _wrk_mixed(base, SETTLE_SECONDS, script)
                        row = _busy_measure(pid, run["pid"], base, seconds, script)
                    rows[variant].append({**row, "effective_rate_hz": run.get("effective_rate_hz"),
                                          "overhead_percent": run.get("overhead_percent")})
    out: dict[str, Any] = {"rounds": rounds, "seconds": seconds, "rows": rows}
    for variant, key in (("attached", ""), ("sampling only", "sampling_")):
        pairs = list(zip(rows[variant], rows["unattached"], strict=True))
        out[f"{key}throughput_ratios"] = [a["rps"] / u["rps"] for a, u in pairs]
        out[f"{key}p95_ratios"] = [a["p95_ms"] / u["p95_ms"] for a, u in pairs]
        out[f"{key}cpu_ratios"] = [a["server_us"] / u["server_us"] for a, u in pairs]
        out[f"{key}whole_cpu_ratios"] = [(a["server_us"] + a["apiscope_us"]) / u["server_us"]
                                         for a, u in pairs]
    return out


def _busy_measure(pid: int, collector: int | None, base: str, seconds: int,
                  script: Path) -> dict[str, float]:
    """One measured run of the mixed load: throughput, client p95, and the server's and
    apiscope's (its py-spy runs included) CPU per request, from the kernel: steadier than the
    throughput on a host whose other processes (PostgreSQL, the load) compete for the cores."""
    (rps, p95), server, own, _ = _cpu_during(pid, collector,
                                             lambda: _wrk_mixed(base, seconds, script))
    requests = max(1.0, rps * seconds)
    return {"rps": rps, "p95_ms": p95, "server_us": 1e6 * server / requests,
            "apiscope_us": 1e6 * own / requests}


# --- attach to first data -----------------------------------------------------------------------

def _dashboard_has_data(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1) as resp:
            text = resp.read().decode()
    except OSError:
        return False

    def total(name: str) -> float:
        return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith(name + "{") or line.startswith(name + " "))

    return total("apiscope_requests_total") > 0 and total("apiscope_samples_total") > 0


def first_data(rounds: int = 3) -> dict[str, Any]:
    """Seconds from `apiscope attach` starting to requests and samples on its dashboard, with
    a light steady load on the server."""
    times = []
    for _ in range(rounds):
        with server("benchmarks.apps:app", {"BENCH_MIDDLEWARE": "bare"}) as (pid, url):
            load = subprocess.Popen(["taskset", "-c", LOAD_CPU, "wrk", "-t1", "-c2", "-d60s",
                                     url], stdout=subprocess.DEVNULL)
            try:
                port = free_port()
                t0 = time.monotonic()
                with attached(pid, "--port", str(port), pin=False, env={"APISCOPE_TOKEN": ""}):
                    wait_for(lambda: _dashboard_has_data(port), 60,  # noqa: B023
                          "data on the dashboard")
                    times.append(time.monotonic() - t0)
            finally:
                load.terminate()
                load.wait()
    return {"seconds": times}


def run() -> dict[str, Any]:
    return {"saturated": saturated(), "paired": paired(), "paired_attach": paired_attach(),
            "busy_host": busy_host(),
            "first_data": first_data()}


def render(result: dict[str, Any]) -> str:
    sat = result["saturated"]
    lines = ["| variant | throughput ratio to bare (median) | server CPU per request |"
             " apiscope / py-spy CPU | sampling rate |", "| --- | --- | --- | --- | --- |"]
    for variant, rows in sat["variants"].items():
        cpu = statistics.median(r["server_us"] for r in rows)
        collector = statistics.median(r["collector_cores"] for r in rows)
        rates = [r.get("effective_rate_hz") or r.get("rate_hz") for r in rows]
        rate = ("-" if not any(rates) else
                f"{statistics.median(x for x in rates if x):.0f} Hz")
        if variant == "py-spy 100 Hz":
            rate = "100 Hz"
        lines.append(f"| {variant} | {ratio_summary([r['ratio'] for r in rows])} | {cpu:.0f} µs"
                     f" | {collector:.3f} cores | {rate} |")
    if "paired" in result:
        rows = result["paired"]["rows"]
        lines += ["", "| paired: agent / bare, same moments | median | min | max |",
                  "| --- | --- | --- | --- |"]
        for name, key in (("loop thread's CPU per request", "ratio"),
                          ("the whole process's CPU per request", "total_ratio")):
            values = [r[key] for r in rows]
            lines.append(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} |"
                         f" {max(values):.3f} |")
        lines.append(f"| the agent's threads (watchdogs, socket), per request |"
                     f" {statistics.median(r['others_us'] for r in rows):.1f} µs"
                     f" | {min(r['others_us'] for r in rows):.1f} µs"
                     f" | {max(r['others_us'] for r in rows):.1f} µs |")
        lines.append(f"| bare server's CPU per request | "
                     f"{statistics.median(r['bare_us'] for r in rows):.0f} µs | | |")
    if "paired_attach" in result:
        rows = result["paired_attach"]["rows"]
        lines += ["", "| paired: attach / bare, same moments | median | min | max |",
                  "| --- | --- | --- | --- |"]
        for name, key in (("loop thread's CPU per request", "ratio"),
                          ("the whole process's CPU per request", "total_ratio"),
                          ("the process's and apiscope's (py-spy included)", "whole_ratio")):
            values = [r[key] for r in rows]
            lines.append(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} |"
                         f" {max(values):.3f} |")
        for name, key in (("the agent's threads, per request", "others_us"),
                          ("apiscope's own CPU, per request", "apiscope_us")):
            values = [r[key] for r in rows]
            lines.append(f"| {name} | {statistics.median(values):.1f} µs | {min(values):.1f} µs"
                         f" | {max(values):.1f} µs |")
        rates = [r["effective_rate_hz"] for r in rows if r.get("effective_rate_hz")]
        if rates:
            lines.append(f"| sampling rate (the session's) | {statistics.median(rates):.0f} Hz |"
                         f" {min(rates):.0f} Hz | {max(rates):.0f} Hz |")
    busy = result["busy_host"]
    un = busy["rows"]["unattached"]
    lines += ["", "| busy host | median | min | max |", "| --- | --- | --- | --- |"]
    parts = [("throughput, attached / unattached", busy["throughput_ratios"]),
             ("client p95, attached / unattached", busy["p95_ratios"])]
    if "sampling_throughput_ratios" in busy:  # results of before the part was measured
        parts += [("throughput, sampling only / unattached", busy["sampling_throughput_ratios"]),
                  ("client p95, sampling only / unattached", busy["sampling_p95_ratios"])]
    if "cpu_ratios" in busy:  # results of before CPU was measured there
        parts += [("server CPU per request, attached / unattached", busy["cpu_ratios"]),
                  ("the same with apiscope's (py-spy included)", busy["whole_cpu_ratios"]),
                  ("server CPU per request, sampling only / unattached",
                   busy["sampling_cpu_ratios"]),
                  ("the same with apiscope's (py-spy included)",
                   busy["sampling_whole_cpu_ratios"])]
    for name, values in parts:
        lines.append(f"| {name} | {statistics.median(values):.3f} | {min(values):.3f} |"
                     f" {max(values):.3f} |")
    cpu = (f", {statistics.median(r['server_us'] for r in un):.0f} µs of server CPU a request"
           if "server_us" in un[0] else "")
    lines.append(f"| unattached throughput, p95 | "
                 f"{statistics.median(r['rps'] for r in un):.0f} req/s, "
                 f"{statistics.median(r['p95_ms'] for r in un):.1f} ms{cpu} | | |")
    first = result["first_data"]["seconds"]
    lines += ["", f"Attach to first requests and samples on the dashboard: median "
              f"{statistics.median(first):.1f} s (max {max(first):.1f} s) over {len(first)} runs."]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("part", choices=["saturated", "paired", "paired_attach", "busy_host",
                                         "first_data", "paired_parts"])
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    print(json.dumps(globals()[args.part](rounds=args.rounds), indent=1, default=str))
