"""What `apiscope attach` at its defaults costs a server with workers, against py-spy alone.

Two servers of two workers each serve the bench app's item endpoint (`benchmarks.apps`, no
middleware): `uvicorn --workers 2` and gunicorn with two Uvicorn workers. The machine's cores
are shared by the server, the load (wrk) and apiscope, nothing pinned: the two workers need
two cores, which is all a small host has. The load is two wrk of 16 connections, started
apart so that each worker gets connections (see `_load`); a run in which one worker did
little is run again.

Variants, every one once per round and per server, each on a fresh server, each a ratio to the
bare server's throughput measured in the same round:

- **bare**: nothing attached.
- **attach**: `apiscope attach MASTER_PID --no-dashboard` at its defaults (the overhead budget
  included), measured after SETTLE_SECONDS of load, once the budget has learnt the costs. The
  report gives the effective sampling rate and the cost apiscope measured, as a share of the
  target's capacity (one core per worker).
- **py-spy, same rate**: `py-spy record --subprocesses` on the master at the rate apiscope's
  budget chose in the same round while it was measured (its windows over the measured run;
  the report's effective rate is the whole session's, the first window at the rate asked for
  included): the anchor, what any sampling profiler costs.

Per variant: the server's CPU per request (the whole process tree: master and workers) and the
CPU of apiscope (its py-spy runs included) or of py-spy, in cores.

`BENCH_WORKERS_ROUNDS` and `BENCH_WORKERS_SECONDS` shorten a run (e.g. 2 and 3 for a smoke
check); `python -m benchmarks.bench_workers --rounds 2 --seconds 3` prints the raw figures.
"""

from __future__ import annotations

import json
import os
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from apiscope.collectors.pyspy import find_pyspy
from apiscope.store import SessionReader
from benchmarks.bench_attach import SETTLE_SECONDS, agent_answers, attached
from benchmarks.harness import (
    ROOT,
    free_port,
    ratio_summary,
    stop_process,
    tree_cpu_seconds,
    wait_for,
    wait_http,
)

WORKERS = 2
CONNECTIONS = 32
STAGGER = 0.1  # seconds between the two wrk processes' starts
BALANCED = 0.3  # the least share of the workers' CPU one of them takes in a measured run
APP = "benchmarks.apps:app"
SERVERS: dict[str, list[str]] = {
    f"uvicorn --workers {WORKERS}": [
        sys.executable, "-m", "uvicorn", APP, "--workers", str(WORKERS), "--host", "127.0.0.1",
        "--port", "{port}", "--log-level", "warning", "--no-access-log"],
    f"gunicorn -w {WORKERS} -k uvicorn.workers.UvicornWorker": [
        sys.executable, "-m", "gunicorn", "-w", str(WORKERS), "-k",
        "uvicorn.workers.UvicornWorker", "-b", "127.0.0.1:{port}", "--log-level", "warning",
        APP],
}
VARIANTS = ("bare", "attach", "py-spy, same rate")


@contextmanager
def workers_server(name: str) -> Iterator[tuple[int, str]]:
    """One of SERVERS, unpinned, once its workers are up; yields (master pid, url)."""
    port = free_port()
    cmd = [arg.replace("{port}", str(port)) for arg in SERVERS[name]]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "BENCH_MIDDLEWARE": "bare"},
                            stdout=subprocess.DEVNULL, start_new_session=True)
    url = f"http://127.0.0.1:{port}/items/1"
    try:
        wait_http(url)
        wait_for(lambda: len(_workers(proc.pid)) >= WORKERS, 30, f"{WORKERS} workers")
        yield proc.pid, url
    finally:
        stop_process(proc, 15, group=True)


def _workers(master: int) -> list[int]:
    """The master's children that run the app (multiprocessing's resource tracker does not)."""
    try:
        children = psutil.Process(master).children()
    except psutil.Error:
        return []
    found = []
    for child in children:
        try:
            if "resource_tracker" not in " ".join(child.cmdline()):
                found.append(child.pid)
        except psutil.Error:
            pass
    return found


def _load(url: str, seconds: int) -> tuple[float, int]:
    """(requests per second, requests done) of two wrk (1 thread, half the CONNECTIONS each),
    unpinned: they share the cores with the server and apiscope. The second starts STAGGER
    seconds after the first: 32 connections opened at once mostly go to whichever worker
    accepts first, and the other stays idle for the whole run; the second wrk's connections go
    to the worker that is not busy yet."""
    if shutil.which("wrk") is None:
        raise RuntimeError("wrk is not installed (make system-deps)")
    procs = []
    for i in range(2):
        if i:
            time.sleep(STAGGER)
        procs.append(subprocess.Popen(
            ["wrk", "-t1", f"-c{CONNECTIONS // 2}", f"-d{seconds}s", url],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    rps, done = 0.0, 0
    for proc in procs:
        out = proc.communicate()[0]
        found = re.search(r"Requests/sec:\s+([\d.]+)", out)
        count = re.search(r"(\d+) requests in", out)
        if proc.returncode != 0 or found is None or count is None or "Non-2xx" in out:
            raise RuntimeError(f"unexpected wrk output: {out}")
        rps += float(found.group(1))
        done += int(count.group(1))
    return rps, done


def _worker_cpu(master: int) -> dict[int, float]:
    """CPU seconds of each of the master's workers so far."""
    out: dict[int, float] = {}
    for pid in _workers(master):
        try:
            t = psutil.Process(pid).cpu_times()
        except psutil.Error:
            continue
        out[pid] = float(t.user + t.system)
    return out


def _measure(pid: int, url: str, seconds: int, collector: int | None) -> dict[str, Any]:
    """The server under load for `seconds`, once both workers carry it (a run in which one
    of them did less than BALANCED of the workers' CPU is run again, at most twice)."""
    _load(url, 1)  # warm-up
    retries = 0
    while True:
        before, workers = tree_cpu_seconds(pid), _worker_cpu(pid)
        c_before = tree_cpu_seconds(collector) if collector else 0.0
        host, load = _host_busy(), _children_cpu()
        t0, wall = time.monotonic(), time.time()
        rps, done = _load(url, seconds)
        elapsed = time.monotonic() - t0
        used = tree_cpu_seconds(pid) - before
        c_used = (tree_cpu_seconds(collector) - c_before) if collector else 0.0
        # What the rest of the host ran meanwhile: its busy time less the server's, the
        # collector's and wrk's (the only children this process reaps during the run).
        others = _host_busy() - host - used - c_used - (_children_cpu() - load)
        after = _worker_cpu(pid)
        shares = [after[w] - workers[w] for w in workers if w in after]
        total = sum(shares)
        balance = min(shares) / total if len(shares) >= WORKERS and total > 0 else 0.0
        if balance >= BALANCED or retries == 2:
            break
        retries += 1
    return {"rps": rps, "server_us": 1e6 * used / max(1, done), "server_cores": used / elapsed,
            "collector_cores": c_used / elapsed, "span": (wall, wall + elapsed),
            "balance": balance, "retries": retries, "others_cores": others / elapsed}


def _host_busy() -> float:
    """CPU seconds the whole host has been busy, all cores (guest time is in user time; the
    softirq time of the loopback traffic left out, the server's and wrk's own)."""
    t = psutil.cpu_times()
    return float(sum(getattr(t, name, 0.0) for name in
                     ("user", "nice", "system", "irq")))


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextmanager
def pyspy_tree(pid: int, rate: int) -> Iterator[dict[str, Any]]:
    """py-spy alone, as people run it on a server with workers (`record --subprocesses`,
    blocking, no --idle), unpinned."""
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        proc = subprocess.Popen(
            [find_pyspy(), "record", "-p", str(pid), "--subprocesses", "--rate", str(rate),
             "--format", "raw", "--output", f"{tmp}/out.txt"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        out["pid"] = proc.pid
        try:
            time.sleep(1.0)  # its start-up (symbols of each process) is not what is measured
            if proc.poll() is not None:
                raise RuntimeError(f"py-spy exited at once ({proc.returncode})")
            yield out
        finally:
            stop_process(proc, 30)


def _agents(master: int) -> int:
    return sum(1 for pid in _workers(master) if agent_answers(pid))


def _variant(name: str, variant: str, seconds: int, rate: int) -> dict[str, Any]:
    with workers_server(name) as (pid, url):
        if variant == "bare":
            return _measure(pid, url, seconds, None)
        if variant == "py-spy, same rate":
            with pyspy_tree(pid, rate) as spy:
                result = _measure(pid, url, seconds, spy["pid"])
            result["rate_hz"] = rate
            return result
        with tempfile.TemporaryDirectory() as tmp:
            session = Path(tmp) / "s.sqlite"
            with attached(pid, "--no-dashboard", pin=False, session=session) as run:
                wait_for(lambda: _agents(pid) >= WORKERS, 60, "the agent in every worker")
                # Steady state: the budget has learnt the costs from the first windows (at the
                # rate asked for) and planned the following ones; what runs for hours.
                _load(url, SETTLE_SECONDS)
                result = _measure(pid, url, seconds, run["pid"])
            result["measured_rate_hz"] = _rate_within(session, *result["span"])
        for key in ("effective_rate_hz", "overhead_percent", "max_overhead_percent",
                    "requests_kept_one_in"):
            result[key] = run.get(key)
        return result


def _rate_within(session: Path, start: float, end: float) -> float | None:
    """The sampling rate of the session's windows over [start, end] (wall-clock seconds),
    weighted by how much of it each window covers: the rate the budget chose while measured.
    The report's effective rate is the whole session's, its first window (at the rate asked
    for, before the budget knows the costs) included."""
    with SessionReader(session) as reader:
        windows = reader.windows()
    covered = [(min(end, w.end) - max(start, w.start), w.rate_hz) for w in windows]
    seconds = sum(s for s, _ in covered if s > 0)
    return sum(s * rate for s, rate in covered if s > 0) / seconds if seconds else None


def run(rounds: int | None = None, seconds: int | None = None) -> dict[str, Any]:
    """Every server and variant once per round; each server's bare throughput of the round is
    the base of its variants."""
    rounds = rounds or int(os.environ.get("BENCH_WORKERS_ROUNDS", "5"))
    seconds = seconds or int(os.environ.get("BENCH_WORKERS_SECONDS", "5"))
    rows: dict[str, dict[str, list[dict[str, Any]]]] = {
        name: {v: [] for v in VARIANTS} for name in SERVERS}
    for _ in range(rounds):
        for name in SERVERS:
            results: dict[str, dict[str, Any]] = {}
            rate = 100
            for variant in VARIANTS:  # attach comes before the py-spy run at its rate
                results[variant] = _variant(name, variant, seconds, rate)
                chosen = results[variant].get("measured_rate_hz")
                if variant == "attach" and chosen:
                    rate = max(1, round(chosen))
            for variant, result in results.items():
                result["ratio"] = result["rps"] / results["bare"]["rps"]
                rows[name][variant].append(result)
    budgets = [r["max_overhead_percent"] for name in SERVERS for r in rows[name]["attach"]
               if r.get("max_overhead_percent") is not None]
    return {"rounds": rounds, "seconds": seconds, "workers": WORKERS,
            "budget_percent": statistics.median(budgets) if budgets else None,
            "connections": CONNECTIONS, "stagger": STAGGER, "balanced": BALANCED,
            "settle_seconds": SETTLE_SECONDS,
            "cores": os.cpu_count(), "servers": rows}


def _median_of(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return statistics.median(values) if values else None


def render(result: dict[str, Any]) -> str:
    lines = ["| server | variant | throughput ratio to bare (median) | server CPU per request |"
             " apiscope / py-spy CPU | sampling rate | apiscope's measured cost |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    bare_rps = []
    for name, variants in result["servers"].items():
        bare_rps.append(f"{statistics.median(r['rps'] for r in variants['bare']):.0f} req/s"
                        f" ({name})")
        for variant, rows in variants.items():
            cpu = statistics.median(r["server_us"] for r in rows)
            collector = statistics.median(r["collector_cores"] for r in rows)
            rate = "-"
            if variant == "attach":
                rate = (f"{_median_of(rows, 'measured_rate_hz') or 0:.0f} Hz (session"
                        f" {_median_of(rows, 'effective_rate_hz') or 0:.0f} Hz)")
            elif _median_of(rows, "rate_hz") is not None:
                rate = f"{_median_of(rows, 'rate_hz'):.0f} Hz"
            cost = "-"
            measured = [r["overhead_percent"] for r in rows
                        if r.get("overhead_percent") is not None]
            if measured:
                cost = (f"{statistics.median(measured):.2f} % (min {min(measured):.2f}, max"
                        f" {max(measured):.2f}; budget"
                        f" {_median_of(rows, 'max_overhead_percent'):g} %)")
            lines.append(f"| {name} | {variant} | {ratio_summary([r['ratio'] for r in rows])}"
                         f" | {cpu:.0f} µs | {collector:.3f} cores | {rate} | {cost} |")
    others = [r["others_cores"] for variants in result["servers"].values()
              for rows in variants.values() for r in rows]
    retried = sum(r["retries"] for variants in result["servers"].values()
                  for rows in variants.values() for r in rows)
    lines += ["", "Bare throughput, median: " + "; ".join(bare_rps) + ". The rest of the host"
              f" during the measured runs (its busy time less the server's, apiscope's or"
              f" py-spy's, and wrk's): median {statistics.median(others):.2f} cores, max"
              f" {max(others):.2f}. Runs again for a worker left idle: {retried}."]
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=3)
    args = parser.parse_args()
    out = run(rounds=args.rounds, seconds=args.seconds)
    print(json.dumps(out, indent=1, default=str))
    print(render(out))
