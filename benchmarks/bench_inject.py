"""How long a server stops answering while the agent goes in and comes out.

A bare uvicorn (pinned to core 0) is asked for its item endpoint every 2 ms by one keep-alive
client; the agent is injected and then detached, in interleaved rounds, two ways:

- **by address**: what `apiscope attach` does: the three C functions to call are found in the
  target's files beforehand (`apiscope.inject.symbols`) and called (with ptrace on x86-64,
  `apiscope.inject.ptrace`; with gdb elsewhere);
- **symbol lookup**: the fallback, gdb loading libc's and libpython's symbol tables while it
  holds the target to find them, then the same calls.

For each: the injector's run (`InjectionResult.debugger_seconds`: its start-up included) and the
longest answer the client got while it lasted, which is the stop the server's clients see (the
thread held for the calls, then the agent's start-up or removal on the main thread).
"""

from __future__ import annotations

import http.client
import json
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from apiscope.inject import injector
from apiscope.inject.injector import eject_agent, inject_agent
from benchmarks.harness import server

VARIANTS = ("by address", "symbol lookup")
PROBE_INTERVAL = 0.002
SETTLE = 0.4  # seconds of plain serving around each injection


class Probe(threading.Thread):
    """GETs the url on one connection every PROBE_INTERVAL; keeps (start, seconds) of each."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        parts = urlsplit(url)
        self.host, self.port, self.path = parts.hostname or "127.0.0.1", parts.port, parts.path
        self.answers: list[tuple[float, float]] = []
        self.halt = threading.Event()

    def run(self) -> None:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        while not self.halt.is_set():
            start = time.monotonic()
            conn.request("GET", self.path)
            conn.getresponse().read()
            self.answers.append((start, time.monotonic() - start))
            self.halt.wait(PROBE_INTERVAL)
        conn.close()

    def longest(self, since: float, until: float) -> float:
        return max((s for t, s in self.answers if since <= t <= until), default=0.0)


def _measure(action: Callable[..., Any], pid: int, probe: Probe, lookup: bool
             ) -> dict[str, float]:
    found = injector.find_functions
    if lookup:  # the fallback path: gdb finds the symbols itself
        injector.find_functions = lambda pid: None  # type: ignore[assignment]
    try:
        start = time.monotonic()
        result = action(pid)
        end = time.monotonic()
    finally:
        injector.find_functions = found  # type: ignore[assignment]
    time.sleep(SETTLE)  # a stop that began just before `end` is answered after it
    return {"run_ms": result.debugger_seconds * 1000,
            "longest_answer_ms": probe.longest(start, end) * 1000}


def run(rounds: int = 7) -> dict[str, Any]:
    rows: dict[str, dict[str, list[dict[str, float]]]] = {
        v: {"attach": [], "detach": []} for v in VARIANTS}
    with server("benchmarks.apps:app", {"BENCH_MIDDLEWARE": "bare"}) as (pid, url):
        probe = Probe(url)
        probe.start()
        try:
            time.sleep(SETTLE)
            before = probe.longest(0, time.monotonic()) * 1000
            for round_ in range(rounds):
                order = VARIANTS if round_ % 2 == 0 else VARIANTS[::-1]
                for variant in order:
                    lookup = variant == "symbol lookup"
                    rows[variant]["attach"].append(_measure(inject_agent, pid, probe, lookup))
                    rows[variant]["detach"].append(_measure(eject_agent, pid, probe, lookup))
        finally:
            probe.halt.set()
            probe.join(30)
    return {"rounds": rounds, "rows": rows, "longest_answer_before_ms": before}


def render(result: dict[str, Any]) -> str:
    lines = ["| | injector's run, by address | symbol lookup | ratio | longest answer, by address |"
             " symbol lookup | ratio |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for action in ("attach", "detach"):
        cells = []
        for key in ("run_ms", "longest_answer_ms"):
            new = statistics.median(r[key] for r in result["rows"]["by address"][action])
            old = statistics.median(r[key] for r in result["rows"]["symbol lookup"][action])
            cells += [f"{new:.0f} ms", f"{old:.0f} ms", f"{new / old:.2f}"]
        lines.append(f"| {action} | " + " | ".join(cells) + " |")
    lines.append(f"\nLongest answer before the first injection: "
                 f"{result['longest_answer_before_ms']:.0f} ms.")
    return "\n".join(lines)


if __name__ == "__main__":
    print(json.dumps(run(rounds=3), indent=1))
