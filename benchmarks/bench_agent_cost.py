"""The agent's cost per request in CPU instructions: a measure the host's noise cannot move.

Throughput ratios on a shared 2-core machine move by several percent from run to run, more
than the agent's whole cost. Counting the instructions the interpreter executes does not: the
bench app is driven in-process (synthetic HTTP scopes straight into the ASGI app, no server,
no sockets) under valgrind's callgrind, once with `SHORT` and once with `LONG` requests, and
the difference divided by `LONG - SHORT` is the cost of one request, start-up left out. Only
the thread serving the requests is counted (`--separate-threads`), and string hashing is
seeded (`PYTHONHASHSEED=0`), so a variant gives the same count to within a fraction of a
percent each run.

Variants: the bare app; `floor`, a pure ASGI middleware that only awaits the app (what any
middleware costs before it does anything); the agent (its watchdogs off: their threads run by
the clock, which valgrind slows fifty-fold; their cost is the watchdog section's); and the
peers. Each middleware's count is divided by the bare app's.

The same count for a whole server (`served`): uvicorn under callgrind answering one
keep-alive client, its counters zeroed after a warm-up and dumped after `LONG - SHORT` more
requests: HTTP parsing, the transport and the loop included, which the in-process drive
leaves out; the agent with its watchdogs off and on (the pass timing wraps the loop's
`select`; one client asking in turn makes a pass or two per request, the most it costs).

`python -m benchmarks.bench_agent_cost drive VARIANT N` is the driven process.
"""

from __future__ import annotations

import asyncio
import http.client
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from benchmarks.harness import ROOT, free_port, wait_http

SHORT, LONG = 300, 1300
VARIANTS = ["bare", "floor", "apiscope", "instrumentator", "exporter", "otel"]
SERVED = {"bare": ("bare", "0"), "floor": ("floor", "0"), "apiscope": ("apiscope", "0"),
          "apiscope, watchdogs on": ("apiscope", "1")}

_SCOPE = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
          "scheme": "http", "path": "/items/1", "raw_path": b"/items/1", "query_string": b"",
          "root_path": "", "headers": [(b"host", b"127.0.0.1")],
          "server": ("127.0.0.1", 8000), "client": ("127.0.0.1", 40000)}


def drive(variant: str, requests: int) -> None:
    """Serve `requests` requests of the bench app's item endpoint in this process."""
    os.environ["BENCH_MIDDLEWARE"] = variant
    from benchmarks.apps import build

    app = build()

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise SystemExit(f"the bench app answered {message['status']}")

    async def serve() -> None:
        for _ in range(requests):
            await app(dict(_SCOPE), receive, send)

    asyncio.run(serve())
    sys.stdout.flush()
    os._exit(0)  # the agent's threads are not joined: nothing after the requests is counted


def _instructions(variant: str, requests: int) -> int:
    """Instructions the main thread executed to start up and serve `requests` requests."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "APISCOPE_WATCHDOG": "0"}
        subprocess.run(["valgrind", "--tool=callgrind", "--separate-threads=yes",
                        f"--callgrind-out-file={out}", sys.executable, "-m",
                        "benchmarks.bench_agent_cost", "drive", variant, str(requests)],
                       cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        main_thread = Path(f"{out}-01")  # callgrind numbers the threads from 1, main first
        match = re.search(r"^(?:summary|totals): (\d+)", main_thread.read_text(), re.M)
        if match is None:
            raise RuntimeError(f"no instruction count in {main_thread.name}")
        return int(match.group(1))


def per_request(variant: str) -> float:
    short, long = (_instructions(variant, n) for n in (SHORT, LONG))
    return (long - short) / (LONG - SHORT)


def _ask(port: int, requests: int) -> None:
    client = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    for _ in range(requests):
        client.request("GET", "/items/1")
        response = client.getresponse()
        response.read()
        if response.status != 200:
            raise RuntimeError(f"the bench app answered {response.status}")
    client.close()


def served(name: str) -> float:
    """Instructions per request of a uvicorn's serving thread, answering one client."""
    variant, watchdogs = SERVED[name]
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        env = {**os.environ, "PYTHONHASHSEED": "0", "APISCOPE_WATCHDOG": watchdogs,
               "BENCH_MIDDLEWARE": variant}
        proc = subprocess.Popen(
            ["valgrind", "--tool=callgrind", "--separate-threads=yes",
             f"--callgrind-out-file={out}", sys.executable, "-m", "uvicorn",
             "benchmarks.apps:app", "--port", str(port), "--log-level", "warning",
             "--no-access-log"], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            wait_http(f"http://127.0.0.1:{port}/items/1", timeout=120)
            _ask(port, SHORT)
            subprocess.run(["callgrind_control", "--zero", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            _ask(port, LONG - SHORT)
            subprocess.run(["callgrind_control", "--dump", str(proc.pid)], check=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        finally:
            proc.terminate()
            proc.wait(60)
        dumped = Path(f"{out}.1-01")  # the first dump, the main (serving) thread
        match = re.search(r"^(?:summary|totals): (\d+)", dumped.read_text(), re.M)
        if match is None:
            raise RuntimeError(f"no instruction count in {dumped.name}")
        return int(match.group(1)) / (LONG - SHORT)


def run(rounds: int = 3) -> dict[str, Any]:
    if shutil.which("valgrind") is None:
        raise RuntimeError("valgrind is not installed (make system-deps)")
    counts: dict[str, list[float]] = {v: [] for v in VARIANTS}
    jobs = [v for _ in range(rounds) for v in VARIANTS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for variant, count in zip(jobs, pool.map(per_request, jobs), strict=True):
            counts[variant].append(count)
        server: dict[str, float] = dict(zip(SERVED, pool.map(served, SERVED), strict=True))
    return {"rounds": rounds, "short": SHORT, "long": LONG, "instructions": counts,
            "served": server}


def render(result: dict[str, Any]) -> str:
    counts = result["instructions"]
    bare = statistics.median(counts["bare"])
    lines = ["| middleware | instructions per request (median, min, max) | ratio to bare |",
             "| --- | --- | --- |"]
    for variant, values in counts.items():
        median = statistics.median(values)
        lines.append(f"| {variant} | {median / 1000:.1f} k ({min(values) / 1000:.1f}, "
                     f"{max(values) / 1000:.1f}) | {median / bare:.3f} |")
    server = result.get("served")
    if server:
        lines += ["", "| served by uvicorn, one client | instructions per request | ratio to "
                  "bare |", "| --- | --- | --- |"]
        lines += [f"| {name} | {count / 1000:.1f} k | {count / server['bare']:.3f} |"
                  for name, count in server.items()]
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "drive":
        drive(sys.argv[2], int(sys.argv[3]))
    else:
        print(render(run()))
