"""`make soak`: apiscope attached at its defaults for an hour against a steady load.

What a user leaving it attached in production wants to know: does its cost stay within the
budget the whole time, does the server's memory stay flat, and how big does the session grow.
One uvicorn worker serves the benchmark's item endpoint pinned to SERVER_CPU; wrk (4
connections, pinned to LOAD_CPU) keeps it busy in one-minute runs; `apiscope attach` runs at its
defaults (dashboard off) on the server's core. Every minute: the server's RSS and CPU, apiscope's
CPU (its own and py-spy's) and the session's size on disk.

`SOAK_MINUTES` shortens it (a check of the harness, not a soak).
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.bench_attach import agent_answers, attached
from benchmarks.harness import cpu_seconds, server, tree_cpu_seconds, wait_for, wrk


def _size(session: Path) -> int:
    return sum(p.stat().st_size for p in session.parent.glob(session.name + "*") if p.exists())


def run(minutes: int | None = None) -> dict[str, Any]:
    import psutil

    minutes = minutes or int(os.environ.get("SOAK_MINUTES", "60"))
    rows: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="apiscope-soak-") as tmp, \
            server("benchmarks.apps:app", {"BENCH_MIDDLEWARE": "bare"}) as (pid, url):
        session = Path(tmp) / "soak.sqlite"
        target = psutil.Process(pid)
        with attached(pid, "--no-dashboard", session=session) as run_info:
            wait_for(lambda: agent_answers(pid), 60, "the agent")
            for minute in range(1, minutes + 1):
                server_before, tool_before = cpu_seconds(pid), tree_cpu_seconds(run_info["pid"])
                t0 = time.monotonic()
                rps = wrk(url, seconds=60, connections=4)
                elapsed = time.monotonic() - t0
                rows.append({
                    "minute": minute, "rps": rps,
                    "server_cores": (cpu_seconds(pid) - server_before) / elapsed,
                    "apiscope_cores": (tree_cpu_seconds(run_info["pid"]) - tool_before) / elapsed,
                    "rss_mb": target.memory_info().rss / 1e6,
                    "session_mb": _size(session) / 1e6,
                })
        final_mb = _size(session) / 1e6
    first, last = rows[0], rows[-1]
    return {"minutes": minutes, "rows": rows, "report": run_info,
            "rss_growth_mb": last["rss_mb"] - first["rss_mb"],
            "session_mb": final_mb, "session_mb_per_hour": final_mb * 60 / minutes,
            "apiscope_cores_median": statistics.median(r["apiscope_cores"] for r in rows),
            "apiscope_cores_max": max(r["apiscope_cores"] for r in rows)}


def render(result: dict[str, Any]) -> str:
    rows = result["rows"]
    report = result["report"]
    step = max(1, len(rows) // 12)
    lines = ["| minute | requests/s | server CPU | apiscope CPU (py-spy included) | server RSS |"
             " session |", "| --- | --- | --- | --- | --- | --- |"]
    for r in rows[::step] + ([rows[-1]] if (len(rows) - 1) % step else []):
        lines.append(f"| {r['minute']} | {r['rps']:.0f} | {r['server_cores']:.3f} cores |"
                     f" {r['apiscope_cores']:.4f} cores | {r['rss_mb']:.1f} MB |"
                     f" {r['session_mb']:.1f} MB |")
    lines += ["", f"Over {result['minutes']} minutes: apiscope's CPU median"
              f" {result['apiscope_cores_median']:.4f} cores (max"
              f" {result['apiscope_cores_max']:.4f}); the report's mean cost"
              f" {report.get('overhead_percent')}% of the target's capacity (budget"
              f" {report.get('max_overhead_percent')}%) at an effective"
              f" {report.get('effective_rate_hz')} Hz; server RSS"
              f" {result['rss_growth_mb']:+.1f} MB from the first minute to the last; session"
              f" {result['session_mb']:.1f} MB ({result['session_mb_per_hour']:.0f} MB per hour)."]
    return "\n".join(lines)
