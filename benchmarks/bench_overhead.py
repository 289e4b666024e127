"""Agent overhead against the bare app and the peers, and py-spy sampling overhead.

Every round measures every variant once, in turn (interleaved), so slow drifts of a shared
machine hit all variants alike; results are ratios to the bare app of the same round.
"""

from __future__ import annotations

import os
import statistics
import time
from typing import Any

from benchmarks.harness import SERVER_CPU, cpu_seconds, ratio_summary, server, wrk, wrk_with_cpu

MIDDLEWARE_VARIANTS = ["bare", "apiscope", "instrumentator", "exporter", "otel"]


def measure(variant: str, seconds: int) -> tuple[float, float]:
    """(requests per second, server CPU microseconds per request) for one variant."""
    with server("benchmarks.apps:app", {"BENCH_MIDDLEWARE": variant}) as (pid, url):
        wrk(url, seconds=1)  # warm-up
        before = cpu_seconds(pid)
        rps = wrk(url, seconds=seconds)
        used = cpu_seconds(pid) - before
    return rps, 1e6 * used / max(1.0, rps * seconds)


def collector_cpu_seconds() -> float:
    """CPU of this process, its live py-spy children and the ones already reaped.

    The wrk and server processes are started with their own sessions and waited for by
    the harness only after the measurement, so they are not counted here.
    """
    import psutil

    me = psutil.Process()
    t = me.cpu_times()
    total = t.user + t.system + t.children_user + t.children_system
    for child in me.children(recursive=True):
        try:
            if "py-spy" in " ".join(child.cmdline()):
                c = child.cpu_times()
                total += c.user + c.system
        except psutil.Error:
            pass
    return float(total)


def agent_overhead(rounds: int = 5, seconds: int = 5) -> dict[str, Any]:
    ratios: dict[str, list[float]] = {v: [] for v in MIDDLEWARE_VARIANTS}
    cpu: dict[str, list[float]] = {v: [] for v in MIDDLEWARE_VARIANTS}
    for _ in range(rounds):
        results = {v: measure(v, seconds) for v in MIDDLEWARE_VARIANTS}
        bare_rps, _bare_cpu = results["bare"]
        for v, (rps, us) in results.items():
            ratios[v].append(rps / bare_rps)
            cpu[v].append(us)
    return {"ratios": ratios, "cpu_us": cpu, "rounds": rounds, "seconds": seconds}


SAMPLING_VARIANTS = ((100, False), (100, True), (1000, False), (1000, True))


def sampling_overhead(variants: tuple[tuple[int, bool], ...] = SAMPLING_VARIANTS,
                      rounds: int = 5, seconds: int = 5) -> dict[str, Any]:
    """Throughput while apiscope's sampler records the server, over throughput without.

    Each variant is (rate, nonblocking); every round measures the bare server right before.
    """
    ratios: dict[str, list[float]] = {_label(*v): [] for v in variants}
    collector_cpu: dict[str, list[float]] = {_label(*v): [] for v in variants}
    for _ in range(rounds):
        for rate, nonblocking in variants:
            ratio, cpu = _sampled_ratio(rate, nonblocking, seconds)
            ratios[_label(rate, nonblocking)].append(ratio)
            collector_cpu[_label(rate, nonblocking)].append(cpu)
    return {"ratios": ratios, "collector_cpu": collector_cpu, "rounds": rounds}


def _label(rate: int, nonblocking: bool) -> str:
    return f"{rate} Hz" + (" --nonblocking" if nonblocking else "")


def _sampled_ratio(rate: int, nonblocking: bool, seconds: int) -> tuple[float, float]:
    from apiscope.collectors.stacks import StackSampler

    with server("benchmarks.apps:app", {"BENCH_MIDDLEWARE": "bare"}) as (pid, url):
        wrk(url, seconds=1)
        bare = wrk(url, seconds=seconds)
        windows: list[Any] = []
        sampler = StackSampler(pid, rate_hz=rate, subprocesses=False, nonblocking=nonblocking,
                               window_seconds=1.0, on_window=windows.append)
        # py-spy (a child: it inherits the affinity) shares the server's core, so its cost
        # lands on the target, never on the load generator's core.
        affinity = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {int(SERVER_CPU)})
        try:
            sampler.start()
        finally:
            os.sched_setaffinity(0, affinity)
        time.sleep(1.5)  # let the first py-spy window start before measuring
        before = collector_cpu_seconds()
        t0 = time.monotonic()
        sampled, wrk_cpu = wrk_with_cpu(url, seconds=seconds)
        elapsed = time.monotonic() - t0
        after = collector_cpu_seconds() - wrk_cpu
        sampler.stop()
    return sampled / bare, (after - before) / elapsed


def render(agent: dict[str, Any], sampling: dict[str, Any]) -> str:
    lines = ["| middleware | throughput ratio to bare (median) | server CPU per request |",
             "| --- | --- | --- |"]
    for v, rs in agent["ratios"].items():
        cpu = statistics.median(agent["cpu_us"][v])
        lines.append(f"| {v} | {ratio_summary(rs)} | {cpu:.0f} µs |")
    lines += ["", "| sampling | throughput ratio to unsampled (median) | collector CPU |",
              "| --- | --- | --- |"]
    for label, rs in sampling["ratios"].items():
        lines.append(f"| {label} | {ratio_summary(rs)} | "
                     f"{statistics.median(sampling['collector_cpu'][label]):.3f} core-s/s |")
    return "\n".join(lines)
